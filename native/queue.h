/* One hardware queue: its own thread and io_uring, fetching and committing every tag. */
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "target.h"
#include "uring_compat.h"

enum data_mode { MODE_COPY, MODE_USER_COPY, MODE_LEASE, MODE_AUTO_LEASE };

/* Counters for `stats`: written by the queue thread alone, read from JavaScript. Relaxed atomics with a
 * plain load and store (bump), so the hot path pays no locked instruction. A line of their own per queue. */
struct alignas(64) queue_stats {
	std::atomic<uint64_t> requests, leased, copied, errors, retries, short_transfers;
};

static inline void bump(std::atomic<uint64_t> &c)
{
	c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

/* What every queue of a device shares; owned by the device. */
struct device_ctx {
	uint32_t dev_id;
	uint16_t nr_queues;
	uint16_t depth;
	uint32_t max_io_bytes;
	enum data_mode mode;
	bool user_copy;   /* the device has USER_COPY: any request may be served through a copy */
	int ublkc_fd;
	struct target tgt;
	/* One per queue, made before the target's init (which may start a thread that reads them). */
	std::unique_ptr<struct queue_stats[]> stats;
	/* Queue failures reach the device (and so JavaScript) through this; see device.cc. */
	std::function<void()> on_queue_failed;
};

/* user_data of every SQE: tag | kind << 16 | index << 24 | gen << 32 (target ops: see tq_sqe). */
enum ud_kind : uint8_t { UD_CMD, UD_LEADER, UD_UNLEASE, UD_MEMBER, UD_WAKE, UD_TARGET, UD_TARGET_REQ, UD_CANCEL };

/* Engine-side state of one member. */
struct member_state {
	uint32_t done;      /* bytes moved so far */
	uint32_t next;      /* next in its stream: tag << 8 | index, or STREAM_END */
	bool busy;          /* an SQE of it is in flight (for cancellation at drain) */
};
#define STREAM_END 0xffffffffu

enum io_state : uint8_t { IO_FETCHING, IO_SERVING, IO_COMMITTING, IO_DEAD };

/* Per-tag state. */
struct io {
	struct request req;
	struct member_state ms[MAX_MEMBERS];
	void *buf;          /* copy buffer: copy and user-copy modes, and req.copy */
	enum io_state state;
	bool held;          /* the target keeps it (QUEUE_IO_PENDING) and has not released it */
	bool leasing;       /* leader in flight */
	bool leased;        /* we hold a manual lease (REGISTER_IO_BUF) at lease_slot() */
	bool buf_used;      /* the request's data went through buf (a WRITE's was copied in) */
	bool recommitted;   /* a refused COMMIT was re-sent once with -EIO */
	uint8_t submitted;  /* members[0..submitted) have been issued */
	uint8_t target_ops; /* request-bound target ops in flight */
	uint16_t inflight;  /* member completions still expected (results and notifications) */
	int32_t err;        /* first failure among leader, members and the target's own result */
	int32_t tresult;    /* the target's result (QUEUE_IO_DONE's req.result, or request_complete's) */
	/* What completed members have filled or consumed of the request buffer: sorted, merged ranges. */
	struct {
		uint32_t start, end;
	} cov[MAX_MEMBERS];
	uint8_t nr_cov;
	uint16_t backlog_next;
};

struct stream {
	uint32_t head, tail; /* tag << 8 | index of queued members, STREAM_END when empty */
	bool busy;           /* the head member is in flight */
};

struct queue {
	struct tq tq; /* what the target sees */
	struct queue_stats *stats; /* the device's, for this queue */
	struct device_ctx *dev;
	uint16_t q_id;
	const struct ublksrv_io_desc *descs;
	struct io_uring ring;
	bool ring_ready;
	bool target_ready;
	std::vector<struct io> ios;
	unsigned nr_dead;
	unsigned nr_serving;
	unsigned max_serving;  /* requests served at once so that the CQ can never overflow */
	uint16_t backlog_head, backlog_tail;
	unsigned target_ops;   /* queue-wide target ops in flight */
	struct stream streams[MAX_STREAMS];
	bool draining;         /* stopping or failed: nothing is held for later any more */
	bool failed;           /* new requests fail at once */
	bool bufs_kept;        /* teardown left members in flight: their buffers must outlive us */
	int wake_fd;
	uint64_t wake_val;     /* the eventfd's counter, read by the ring */
	std::atomic<bool> stop_requested;
	std::atomic<bool> force_stop;
	std::atomic<bool> handover; /* a new server takes over: finish what is started, leave the rest */
	std::atomic<bool> leaving;  /* a handover is coming: the target settles before the queue ends */

	std::mutex remote_lock;
	/* Completions handed over from other threads: bounded (one per tag); the queue thread swaps the
	 * two vectors and handles the taken one, so neither allocates after setup. */
	std::vector<struct remote_completion> remote, remote_taken;

	/* Written by the queue thread, read by others after ready() or join: guarded. */
	std::mutex error_lock;
	std::string error;
	std::thread thread;
};

/* Queue thread entry: sets up the ring, FETCHes every tag, then serves until every tag is aborted.
 * Signals setup completion (ok or error) through ready(). */
void queue_run(struct queue *q, const std::function<void()> &ready);
/* From any thread: stop holding requests (they fail with EIO); the kernel's STOP_DEV does the rest. */
void queue_request_drain(struct queue *q);
/* From any thread: hand the device over to a next server (upgrade). Requests already started are
 * served to the end; any that arrive later are left uncommitted, for the kernel to re-issue to the
 * next server (USER_RECOVERY_REISSUE); the queue ends once it holds none. The device is not stopped. */
void queue_request_handover(struct queue *q);
/* From any thread, before QUIESCE_DEV ends the queue (the kernel aborts its idle commands): the device is
 * about to be handed over, so however the queue ends, its target settles first (queue_settle). */
void queue_prepare_handover(struct queue *q);
std::string queue_error(struct queue *q);

/* SQE helpers shared by the queue loop and the lease. */
struct io_uring_sqe *queue_sqe(struct queue *q);
void queue_commit(struct queue *q, struct io *io, int32_t result);
/* FETCH or COMMIT_AND_FETCH (op) of io's tag, with result. */
void queue_prep_cmd(struct queue *q, struct io *io, uint32_t op, int32_t result);
void queue_set_error(struct queue *q, const std::string &msg);
static inline uint64_t ud_make(uint16_t tag, enum ud_kind kind, uint8_t index, uint32_t gen = 0)
{
	return (uint64_t)tag | (uint64_t)kind << 16 | (uint64_t)index << 24 | (uint64_t)gen << 32;
}

/* The request engine: see request.cc. */
static inline uint16_t auto_slot(const struct queue *, uint16_t tag)
{
	return tag;
}
static inline uint16_t lease_slot(const struct queue *q, uint16_t tag)
{
	return q->dev->depth + tag;
}
void lease_run(struct queue *q, struct io *io);
void lease_release(struct queue *q, struct io *io, int32_t result);
void lease_on_leader(struct queue *q, struct io *io, int res);
void lease_on_member(struct queue *q, struct io *io, unsigned m, const struct io_uring_cqe *cqe);
void lease_cancel_members(struct queue *q, struct io *io);
