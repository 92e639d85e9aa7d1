/* file: a regular file or a block device (fixed file 1), one member per request; a discard on a block
 * device is the block layer's own io_uring command, a ring op of the target's. */
#include <fcntl.h>
#include <linux/fs.h>

#include "../../native/discard.h"

static int file_init(struct target *t)
{
	return t->cfg.fds.size() == 1 ? 0 : -EINVAL;
}

static int file_queue_io(struct tq *tq, struct request *req)
{
	struct member *m;
	switch (req->op) {
	case UBLK_IO_OP_READ:
	case UBLK_IO_OP_WRITE:
		m = add_member(req, req->op == UBLK_IO_OP_READ ? MEMBER_READ : MEMBER_WRITE, 1);
		m->len = req->len;
		m->file_off = req->offset;
		if (req->op == UBLK_IO_OP_WRITE && (req->flags & UBLK_IO_F_FUA))
			m->rw_flags = RWF_DSYNC;
		break;
	case UBLK_IO_OP_FLUSH:
		add_member(req, MEMBER_FSYNC, 1);
		break;
	case UBLK_IO_OP_DISCARD:
		/* On a block device (index.ts) a punched hole is written zeroes, not a discard; the request
		 * waits for the block discard (file_on_cqe). */
		if (block_discard_files(tq->t) & 1) {
			block_discard(tq, req, 1, req->offset, req->len);
			return QUEUE_IO_PENDING;
		}
		[[fallthrough]];
	case UBLK_IO_OP_WRITE_ZEROES:
		m = add_member(req, MEMBER_FALLOCATE, 1);
		m->mode = zeroing_mode(req);
		m->len = req->len;
		m->file_off = req->offset;
		break;
	default:
		req->result = -EOPNOTSUPP;
	}
	return QUEUE_IO_DONE;
}

static void file_on_cqe(struct tq *tq, struct request *req, uint64_t, const struct io_uring_cqe *cqe)
{
	request_complete(tq, req, cqe->res < 0 ? cqe->res : 0);
}

static const char *const file_options[] = {"block-discard", nullptr};

static const struct target_ops file_target_ops = {
	.name = "file",
	.init = file_init,
	.queue_io = file_queue_io,
	.on_cqe = file_on_cqe,
	.options = file_options,
};
UBLK_TARGET(file_target_ops)
