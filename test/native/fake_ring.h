/*
 * A fake kernel behind liburing: the test binary links these definitions of liburing's few out-of-line
 * functions instead of -luring, so native/queue.cc and native/request.cc run unchanged (their inline
 * io_uring_get_sqe, for_each_cqe and cq_advance work on ring memory the fake owns).
 *
 * The queue thread and the test take turns: when the queue would wait for a completion with none there
 * (io_uring_submit_and_wait, io_uring_wait_cqe_timeout), the test runs; it inspects what was submitted,
 * posts completions and calls run(), which lets the queue handle them until it waits again.
 */
#pragma once
#include <stdint.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

#include "../../native/queue.h"

struct fake_kernel {
	/* Ring memory the inline liburing helpers read and write. */
	unsigned sq_head = 0, sq_tail = 0, sq_flags = 0, sq_dropped = 0;
	unsigned cq_head = 0, cq_tail = 0, cq_flags = 0, cq_overflow = 0;
	std::vector<struct io_uring_sqe> sq;
	std::vector<unsigned> sq_array;
	std::vector<struct io_uring_cqe> cq;
	bool ring_open = false;

	/* What setup asked for. */
	struct io_uring_params params {};
	unsigned sq_entries = 0, nr_files = 0, nr_sparse_bufs = 0;
	std::vector<int> files; /* the fixed files, as registered and updated */

	/* Submitted SQEs the test has not answered yet, and every SQE ever submitted, in order. */
	std::deque<struct io_uring_sqe> pending;
	std::vector<struct io_uring_sqe> log;
	unsigned overflows = 0; /* CQEs posted into a full CQ (must stay 0) */
	/* Called at every submit with the SQEs just submitted (to answer some at once, as the kernel would). */
	void (*on_submit)(fake_kernel *k, const struct io_uring_sqe &sqe) = nullptr;

	/* Turn taking. */
	std::mutex mu;
	std::condition_variable cv;
	bool queue_turn = false;
	bool queue_ended = false;

	unsigned cq_ready() const { return cq_tail - cq_head; }
	void post(uint64_t user_data, int32_t res, uint32_t flags = 0);
	/* Let the queue thread handle what was posted; returns when it waits again or has ended. */
	void run();
	/* Queue thread side. */
	void wait_for_test();
};

extern fake_kernel *g_kernel;

/* Decoding of user_data (see ud_make). */
static inline unsigned ud_tag(uint64_t ud) { return ud & 0xffff; }
static inline unsigned ud_kind_of(uint64_t ud) { return (ud >> 16) & 0xff; }
static inline unsigned ud_index(uint64_t ud) { return (ud >> 24) & 0xff; }
static inline uint32_t ud_gen(uint64_t ud) { return ud >> 32; }
/* A uring_cmd SQE's ublk command and its payload. */
static inline uint32_t sqe_cmd_op(const struct io_uring_sqe &s) { return (uint32_t)s.off; }
static inline struct ublksrv_io_cmd sqe_io_cmd(const struct io_uring_sqe &s)
{
	struct ublksrv_io_cmd c;
	memcpy(&c, reinterpret_cast<const char *>(&s) + 48, sizeof(c));
	return c;
}
