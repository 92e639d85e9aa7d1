/* file: a regular file or a block device (fixed file 1), one member per request. */
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "../../native/target.h"

static int file_init(struct target *t)
{
	return t->cfg.fds.size() == 1 ? 0 : -EINVAL;
}

static int file_queue_io(struct tq *, struct request *req)
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

static const struct target_ops file_target_ops = {
	.name = "file",
	.init = file_init,
	.queue_io = file_queue_io,
};
UBLK_TARGET(file_target_ops)
