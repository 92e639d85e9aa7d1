/* null: completes every request at once. It moves no data, so it takes no lease and copies nothing. */
#include "../../native/target.h"

static int null_init(struct target *)
{
	return 0;
}

static int null_queue_io(struct tq *, struct request *req)
{
	bool data = req->op == UBLK_IO_OP_READ || req->op == UBLK_IO_OP_WRITE;
	req->result = data ? (int32_t)req->len : 0;
	return QUEUE_IO_DONE;
}

static const struct target_ops null_target_ops = {
	.name = "null",
	.init = null_init,
	.queue_io = null_queue_io,
};
UBLK_TARGET(null_target_ops)
