/* file: a regular file or a block device (fixed file 1), one member per request; a discard on a block
 * device is the block layer's own io_uring command, a ring op of the target's. */
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "../../native/target.h"
#include "../../native/uring_compat.h"

static int file_init(struct target *t)
{
	return t->cfg.fds.size() == 1 ? 0 : -EINVAL;
}

/* BLOCK_URING_CMD_DISCARD on the backing; the request waits for it (file_on_cqe). */
static int discard_cmd(struct tq *tq, struct request *req)
{
	struct io_uring_sqe *sqe = tq_sqe(tq, req, 0);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = 1;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
	sqe->addr = req->offset;
	sqe->addr3 = req->len;
	return QUEUE_IO_PENDING;
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
		/* On a block device (index.ts) a punched hole is written zeroes, not a discard. */
		if (tq->t->cfg.num("block-discard", 0))
			return discard_cmd(tq, req);
		[[fallthrough]];
	case UBLK_IO_OP_WRITE_ZEROES:
		/* Both leave zeroes behind; NOUNMAP asks to keep the blocks allocated. */
		m = add_member(req, MEMBER_FALLOCATE, 1);
		m->mode = FALLOC_FL_KEEP_SIZE | ((req->op == UBLK_IO_OP_WRITE_ZEROES && (req->flags & UBLK_IO_F_NOUNMAP))
							 ? FALLOC_FL_ZERO_RANGE
							 : FALLOC_FL_PUNCH_HOLE);
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

static const struct target_ops file_target_ops = {
	.name = "file",
	.init = file_init,
	.queue_io = file_queue_io,
	.on_cqe = file_on_cqe,
};
UBLK_TARGET(file_target_ops)
