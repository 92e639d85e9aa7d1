/*
 * Discard and write-zeroes on a target's files: one file, or a request spread over several (a copy on
 * each, or chunks across them).
 *
 * On a regular file both are an fallocate member. On a block device a punched hole is the device's
 * write-zeroes: a write, which a device that discards may not even have. A discard there is the block
 * layer's own command, BLOCK_URING_CMD_DISCARD, a ring operation of the target's. The TypeScript side
 * says which files are block devices that discard: bit i of the "block-discard" option is file i + 1.
 */
#pragma once
#include <linux/falloc.h>

#include "target.h"
#include "uring_compat.h"

/* The fallocate mode of a discard or write-zeroes member: both leave zeroes; NOUNMAP asks to keep the
 * blocks allocated. */
static inline uint32_t zeroing_mode(const struct request *req)
{
	bool keep = req->op == UBLK_IO_OP_WRITE_ZEROES && (req->flags & UBLK_IO_F_NOUNMAP);
	return FALLOC_FL_KEEP_SIZE | (keep ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE);
}

/* The files of t a discard goes to as a block discard (bit i: file i + 1). */
static inline uint32_t block_discard_files(const struct target *t)
{
	return (uint32_t)t->cfg.num("block-discard", 0);
}

/* BLOCK_URING_CMD_DISCARD of [off, off + len) on fixed file `file`, bound to req: its CQE reaches the
 * target's on_cqe with `file` as the cookie. */
static inline void block_discard(struct tq *tq, struct request *req, uint8_t file, uint64_t off, uint64_t len)
{
	struct io_uring_sqe *sqe = tq_sqe(tq, req, file);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = file;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
	sqe->addr = off;
	sqe->addr3 = len;
}

/* One request's block discards over several files. The engine allows a request MAX_REQUEST_OPS ring
 * operations of the target's in flight: the rest wait here and go out as earlier ones complete. */
struct discard_fanout {
	uint32_t todo;    /* files not discarded yet (bit i: file i + 1) */
	uint32_t inflight;
	int32_t err;      /* the first error that fails the request */
};

/* Where the discard of req goes on file i + 1. */
typedef void (*discard_range)(const struct tq *tq, const struct request *req, unsigned i, uint64_t *off, uint64_t *len);

/* Issues what may go out now; true once every discard of the set is done. */
static inline bool discard_fanout_pump(struct tq *tq, struct request *req, struct discard_fanout *f, discard_range range)
{
	while (f->todo && f->inflight < MAX_REQUEST_OPS) {
		unsigned i = __builtin_ctz(f->todo);
		uint64_t off, len;
		f->todo &= f->todo - 1;
		range(tq, req, i, &off, &len);
		block_discard(tq, req, (uint8_t)(i + 1), off, len);
		f->inflight++;
	}
	return !f->todo && !f->inflight;
}

/* Starts the discards of req on the files in `files` (not empty): the target then returns
 * QUEUE_IO_PENDING, and passes each completion to discard_fanout_done. */
static inline void discard_fanout_start(struct tq *tq, struct request *req, struct discard_fanout *f, uint32_t files,
					discard_range range)
{
	*f = discard_fanout{files, 0, 0};
	discard_fanout_pump(tq, req, f, range);
}

/* A discard of the set completed with res (0 where the target lets its error go); the request completes
 * with the first error once the last one has. */
static inline void discard_fanout_done(struct tq *tq, struct request *req, struct discard_fanout *f, int32_t res,
				       discard_range range)
{
	f->inflight--;
	if (res < 0 && !f->err)
		f->err = res;
	if (discard_fanout_pump(tq, req, f, range))
		request_complete(tq, req, f->err);
}
