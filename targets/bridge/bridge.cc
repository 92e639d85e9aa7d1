/*
 * bridge: the native half of targets written in TypeScript (src/bridge.ts is the other half). Each request
 * is held and its descriptor queued; once the queue has handled a batch of completions the whole batch goes
 * to JavaScript in one call. JavaScript answers through queue_complete_remote, in batches too: with a
 * result, having worked on the tag's buffer in place, or with a file and offset, and then the engine serves
 * the request as one member on the lease: those bytes never reach JavaScript.
 *
 * The tag buffers are JavaScript's (cfg.bufs) and the copies are the engine's, on this thread: a write's
 * bytes are in the buffer before its descriptor goes, a read's go to the kernel at commit. A target that
 * may route (options.routes) gets writes without their bytes, so a routed one is never copied; it copies
 * the few it handles itself.
 */
#include <string.h>

#include "../../native/target.h"

/* One descriptor as JavaScript reads it (little-endian): q, tag, gen, op | flags, len, offset. */
#define DESC_BYTES 24
/* In op | flags, above the kernel's UBLK_IO_F_*: the write's bytes are in the tag's buffer already. */
#define DESC_F_BYTES (1u << 31)

struct bridge_queue {
	std::vector<uint8_t> out;
	bool routes;
};

static int bridge_init(struct target *t)
{
	return t->cfg.js && !t->cfg.bufs.empty() ? 0 : -EINVAL;
}

static int bridge_queue_init(struct tq *tq)
{
	auto *bq = new bridge_queue();
	bq->out.reserve((size_t)tq->depth * DESC_BYTES);
	bq->routes = tq->t->cfg.num("routes", 0) != 0;
	tq->priv = bq;
	return 0;
}

static void bridge_queue_deinit(struct tq *tq)
{
	delete static_cast<struct bridge_queue *>(tq->priv);
	tq->priv = nullptr;
}

static int bridge_queue_io(struct tq *tq, struct request *req)
{
	auto *bq = static_cast<struct bridge_queue *>(tq->priv);
	uint8_t d[DESC_BYTES];
	uint32_t op_flags = req->op | req->flags;
	if (req->op == UBLK_IO_OP_READ || (req->op == UBLK_IO_OP_WRITE && !bq->routes)) {
		req->copy = true;
		if (!request_buf(tq, req)) {
			req->result = -EIO;
			return QUEUE_IO_DONE;
		}
		if (req->op == UBLK_IO_OP_WRITE)
			op_flags |= DESC_F_BYTES;
	}
	memcpy(d, &req->q_id, 2);
	memcpy(d + 2, &req->tag, 2);
	memcpy(d + 4, &req->gen, 4);
	memcpy(d + 8, &op_flags, 4);
	memcpy(d + 12, &req->len, 4);
	memcpy(d + 16, &req->offset, 8);
	bq->out.insert(bq->out.end(), d, d + DESC_BYTES);
	return QUEUE_IO_PENDING;
}

static void bridge_queue_idle(struct tq *tq)
{
	auto *bq = static_cast<struct bridge_queue *>(tq->priv);
	if (bq->out.empty())
		return;
	std::vector<uint8_t> batch;
	batch.reserve((size_t)tq->depth * DESC_BYTES);
	batch.swap(bq->out);
	tq->t->cfg.js->post(tq->t->cfg.js->ctx, std::move(batch));
}

static const char *const bridge_options[] = {"routes", nullptr};

static const struct target_ops bridge_target_ops = {
	.name = "bridge",
	.init = bridge_init,
	.queue_init = bridge_queue_init,
	.queue_deinit = bridge_queue_deinit,
	.queue_io = bridge_queue_io,
	.queue_idle = bridge_queue_idle,
	.options = bridge_options,
};
UBLK_TARGET(bridge_target_ops)
