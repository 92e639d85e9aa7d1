/*
 * bridge: the native half of targets written in TypeScript (src/bridge.ts is the other half, bridge_napi.cc
 * the addon's functions for it, records.h what they exchange). Each request is held and its descriptor
 * queued; once the queue has handled a batch of completions the whole batch goes to JavaScript in one call
 * (the device's host channel). JavaScript answers through queue_complete_remote, in batches too: with a
 * result, having worked on the tag's buffer in place, or with a file and offset, and then the request is
 * served as one member on the lease (bridge_on_remote): those bytes never reach JavaScript.
 *
 * The tag buffers are JavaScript's (cfg.bufs) and the copies are the engine's, on this thread: a write's
 * bytes are in the buffer before its descriptor goes, a read's go to the kernel at commit. A target that
 * may route (options.routes) gets writes without their bytes, so a routed one is never copied; it copies
 * the few it handles itself.
 */
#include <errno.h>

#include "../../native/target.h"
#include "records.h"

struct bridge_queue {
	std::vector<uint8_t> out; /* bridge_desc records */
	bool routes;
};

static int bridge_init(struct target *t)
{
	return t->cfg.js && !t->cfg.bufs.empty() ? 0 : -EINVAL;
}

static int bridge_queue_init(struct tq *tq)
{
	auto *bq = new bridge_queue();
	bq->out.reserve((size_t)tq->depth * sizeof(struct bridge_desc));
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
	uint32_t op_flags = req->op | req->flags;
	if (req->op == UBLK_IO_OP_READ || (req->op == UBLK_IO_OP_WRITE && !bq->routes)) {
		req->copy = true;
		if (!request_buf(tq, req)) {
			req->result = -EIO;
			return QUEUE_IO_DONE;
		}
		if (req->op == UBLK_IO_OP_WRITE)
			op_flags |= BRIDGE_F_BYTES;
	}
	const struct bridge_desc d = {req->q_id, req->tag, req->gen, op_flags, req->len, req->offset};
	const uint8_t *p = reinterpret_cast<const uint8_t *>(&d);
	bq->out.insert(bq->out.end(), p, p + sizeof(d));
	return QUEUE_IO_PENDING;
}

static void bridge_on_remote(struct tq *tq, struct request *req, const struct remote_completion &c)
{
	uint64_t file = c.arg[BRIDGE_ARG_FILE];
	if (!file) {
		request_complete(tq, req, c.result);
		return;
	}
	if (req->op != UBLK_IO_OP_READ && req->op != UBLK_IO_OP_WRITE) {
		request_complete(tq, req, -EINVAL); /* only reads and writes are routed */
		return;
	}
	req->copy = false; /* routed: on the lease after all, whatever the handler looked at */
	struct member *m = add_member(req, req->op == UBLK_IO_OP_READ ? MEMBER_READ : MEMBER_WRITE, (uint8_t)file);
	m->len = req->len;
	m->file_off = c.arg[BRIDGE_ARG_FILE_OFF];
	request_complete(tq, req, c.result);
}

static void bridge_queue_idle(struct tq *tq)
{
	auto *bq = static_cast<struct bridge_queue *>(tq->priv);
	if (bq->out.empty())
		return;
	std::vector<uint8_t> batch;
	batch.reserve((size_t)tq->depth * sizeof(struct bridge_desc));
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
	.on_remote = bridge_on_remote,
	.queue_idle = bridge_queue_idle,
	.options = bridge_options,
};
UBLK_TARGET(bridge_target_ops)
