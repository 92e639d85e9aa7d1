/* null: writes vanish and reads return zeroes. A read is filled from /dev/zero (file 1) by one member,
 * which on the lease zeroes the request's own pages in the kernel and copies nothing; never served
 * without filling, which would hand the reader whatever its pages held before. */
#include "../../native/target.h"

#define ZERO_FILE 1

static int null_init(struct target *)
{
	return 0;
}

static int null_queue_io(struct tq *, struct request *req)
{
	if (req->op == UBLK_IO_OP_READ) {
		struct member *m = add_member(req, MEMBER_READ, ZERO_FILE);
		m->len = req->len;
		return QUEUE_IO_DONE;
	}
	req->result = req->op == UBLK_IO_OP_WRITE ? (int32_t)req->len : 0;
	return QUEUE_IO_DONE;
}

static const struct target_ops null_target_ops = {
	.name = "null",
	.init = null_init,
	.queue_io = null_queue_io,
};
UBLK_TARGET(null_target_ops)
