/* One hardware queue: its own thread and io_uring, fetching and committing every tag. */
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "target.h"
#include "uring_compat.h"

enum data_mode { MODE_COPY, MODE_USER_COPY, MODE_LEASE, MODE_AUTO_LEASE };

/* What every queue of a device shares; owned by the device. */
struct device_ctx {
	uint32_t dev_id;
	uint16_t nr_queues;
	uint16_t depth;
	uint32_t max_io_bytes;
	enum data_mode mode;
	int ublkc_fd;
	struct target tgt;
};

/* user_data of every SQE: tag | kind << 16 | member << 24. */
enum ud_kind : uint8_t { UD_CMD, UD_LEADER, UD_UNLEASE, UD_MEMBER, UD_WAKE };

/* Per-tag state. A tag is idle (command armed in the kernel), serving, or dead after ABORT. */
struct io {
	struct request req;
	void *buf;          /* copy and user-copy modes */
	uint16_t pending;   /* members in flight */
	bool leased;        /* we hold a manual lease (REGISTER_IO_BUF) at lease_slot() */
	bool serving;
	bool dead;
	int32_t err;        /* first failure among leader and members */
};

struct queue {
	struct device_ctx *dev;
	uint16_t q_id;
	const struct ublksrv_io_desc *descs;
	struct io_uring ring;
	bool ring_ready;
	std::vector<struct io> ios;
	unsigned nr_dead;
	unsigned nr_serving;
	int wake_fd;
	std::atomic<bool> force_stop;
	std::string error; /* setup failure, or the first thing the kernel refused while serving */
	std::thread thread;
};

/* Queue thread entry: sets up the ring, FETCHes every tag, then serves until every tag is aborted.
 * Signals setup completion (ok or error) through ready(). */
void queue_run(struct queue *q, const std::function<void()> &ready);

/* SQE helpers shared by the queue loop and the lease. */
struct io_uring_sqe *queue_sqe(struct queue *q);
void queue_commit(struct queue *q, struct io *io, int32_t result);
static inline uint64_t ud_make(uint16_t tag, enum ud_kind kind, uint8_t member)
{
	return (uint64_t)tag | (uint64_t)kind << 16 | (uint64_t)member << 24;
}

/* The lease: see lease.cc. */
static inline uint16_t auto_slot(const struct queue *, uint16_t tag)
{
	return tag;
}
static inline uint16_t lease_slot(const struct queue *q, uint16_t tag)
{
	return q->dev->depth + tag;
}
void lease_start(struct queue *q, struct io *io, bool need_manual_lease);
void lease_on_leader(struct queue *q, struct io *io, int res);
void lease_on_member(struct queue *q, struct io *io, unsigned m, int res);
