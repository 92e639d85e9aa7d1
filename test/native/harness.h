/*
 * One queue of a device, served by the real engine (native/queue.cc, native/request.cc) on the fake kernel,
 * for a target whose callbacks the test scripts. The test plays the kernel: it hands requests to tags,
 * answers the SQEs the engine submits and reads what was committed.
 */
#pragma once
#include <sys/eventfd.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "check.h"
#include "fake_ring.h"

/* A read or write SQE moves len bytes between addr (an offset into the leased slot, for a fixed one) and
 * fixed file fd at off, with this opcode: CHECK_RW(s, opcode, fd, addr, len, off) checks all five. */
#define CHECK_RW(s, opcode, fd, addr, len, off) check_rw(__FILE__, __LINE__, s, opcode, fd, addr, len, off)
void check_rw(const char *file, int line, const struct io_uring_sqe &s, unsigned opcode, int fd, uint64_t addr, uint32_t len,
	      uint64_t off);

struct member_call {
	uint16_t tag;
	unsigned idx;
	int res;
};

struct harness {
	fake_kernel k;
	/* The scripted target: unset hooks behave as a target without them. */
	std::function<int(struct tq *, struct request *)> queue_io;
	std::function<enum member_fold(struct tq *, struct request *, unsigned, int)> on_member;
	std::function<void(struct tq *, struct request *)> on_release;
	std::function<void(struct tq *, struct request *, uint64_t, const struct io_uring_cqe *)> on_cqe;
	std::vector<member_call> member_calls;
	std::vector<uint16_t> released;
	bool queue_failed_cb = false;

	struct target_ops ops;
	struct device_ctx dev {};
	struct queue q {};
	std::vector<struct ublksrv_io_desc> descs;
	std::thread th;
	bool stopped = false;

	explicit harness(enum data_mode mode, uint16_t depth = 4, uint32_t max_io = 1 << 16, const struct target_ops *real = nullptr);
	~harness();
	harness(const harness &) = delete;
	harness &operator=(const harness &) = delete;

	/* Run queue_run on its thread until it first waits (every FETCH submitted). */
	void start();
	/* The kernel hands a request to tag (its parked command completes); arrive() only posts it, request()
	 * lets the queue handle it too. */
	void arrive(uint16_t tag, uint8_t op, uint64_t off, uint32_t len, uint32_t flags = 0);
	void request(uint16_t tag, uint8_t op, uint64_t off, uint32_t len, uint32_t flags = 0);
	/* The oldest unanswered SQE of this kind (and tag, and member index), removed; a zeroed one if none. */
	struct io_uring_sqe take(unsigned kind, int tag = -1, int index = -1);
	unsigned count(unsigned kind, int tag = -1) const;
	/* How many SQEs of this kind (and tag) were ever submitted. */
	unsigned logged(unsigned kind, int tag = -1) const;
	/* Answer the oldest unanswered SQE of this kind and tag with a CQE, and let the queue run. */
	void complete(unsigned kind, int tag, int index, int32_t res, uint32_t flags = 0);
	/* Answer an SQE already taken, and let the queue run. */
	void answer(const struct io_uring_sqe &s, int32_t res, uint32_t flags = 0);
	/* The queue's eventfd read completes: what a wake from another thread (a remote completion, a drain)
	 * looks like to it. */
	void wake();
	/* Was tag's request committed (a COMMIT_AND_FETCH is parked for it)? Its result in *res. */
	bool committed(uint16_t tag, int32_t *res = nullptr) const;
	/* The committed result of tag's request (a failed check if none was committed). */
	int32_t result(uint16_t tag);
	/* Abort every parked command, as QUIESCE_DEV does, and let the queue run. */
	void abort_parked();
	/* Abort every parked command, as STOP_DEV does; true if queue_run then ended on its own. */
	bool stop();

private:
	void post_aborts();
};
