/*
 * fault: wraps another native target (file, null, mirror, stripe, nbd) and injects what a test needs, like
 * kublk's fault_inject: requests that fail, never complete, complete late, or read back corrupted.
 *
 * The wrapper contract (nbdkit's filters): the wrapped target is a whole target of its own, with its own
 * config, files and per-queue state, seen through a tq of its own on the same queue; every hook the
 * wrapper does not act on is passed on to it unchanged.
 *
 * It is the first consumer of the asynchronous contract: a delayed request is pending behind a ring
 * timeout of the target's own and is handed to the wrapped target when it fires; a stalled one is pending
 * until the engine drains it at stop; a corrupted read is served through a copy (req->copy) so the target
 * can touch its bytes, while every other request stays on the lease.
 */
#include <atomic>

#include "../../native/target.h"
#include "../../native/uring_compat.h"

struct range {
	uint64_t off, len;
	int err;
};

/* The cookie of our delay timeouts; the wrapped target's own ring ops (file's discards) use others. */
#define FAULT_DELAY 0xff
/* Room in the CQ for the wrapped target's queue-wide ops (the engine sizes it by the outer table). */
#define FAULT_INNER_QUEUE_OPS 80

struct fault {
	struct target inner;
	struct __kernel_timespec delay; /* read by the kernel when the timeout is submitted: lives here */
	bool delayed;
	std::vector<struct range> fail, stall, corrupt;
	uint64_t fail_after, fail_queue_after;
	std::atomic<uint64_t> seen;
};

static const struct range *hit(const std::vector<struct range> &rs, const struct request *req)
{
	for (const struct range &r : rs)
		if (req->offset < r.off + r.len && r.off < req->offset + req->len)
			return &r;
	return nullptr;
}

static std::vector<struct range> ranges(const struct target_config &cfg, const char *key, unsigned per)
{
	std::vector<struct range> out;
	const std::vector<int64_t> *list = cfg.list(key);
	if (!list)
		return out;
	const std::vector<int64_t> &v = *list;
	for (size_t i = 0; i + per <= v.size(); i += per)
		out.push_back({(uint64_t)v[i], (uint64_t)v[i + 1], per > 2 ? (int)v[i + 2] : 0});
	return out;
}

static int fault_init(struct target *t)
{
	const std::string *over = t->cfg.str("over");
	const struct target_ops *inner = over ? target_find(*over) : nullptr;
	if (!inner || inner == t->ops || inner->queue_ops > FAULT_INNER_QUEUE_OPS)
		return -EINVAL;
	auto *f = new fault();
	f->inner.ops = inner;
	f->inner.cfg = t->cfg;
	f->inner.cfg.declared = inner->options; /* its own keys, among those given to both */
	f->inner.nr_queues = t->nr_queues;
	int64_t us = t->cfg.num("delay-us", 0);
	f->delayed = us > 0;
	f->delay = {us / 1000000, (us % 1000000) * 1000};
	f->fail = ranges(t->cfg, "fail-range", 3);
	f->stall = ranges(t->cfg, "stall-range", 2);
	f->corrupt = ranges(t->cfg, "corrupt-range", 2);
	f->fail_after = t->cfg.num("fail-after", 0);
	f->fail_queue_after = t->cfg.num("fail-queue-after", 0);
	int ret = inner->init(&f->inner);
	if (ret < 0) {
		t->error = f->inner.error;
		delete f;
		return ret;
	}
	/* What it registers (an nbd target's sockets, a mirror's free slots) is what the ring gets. */
	t->cfg.fds = f->inner.cfg.fds;
	t->priv = f;
	if (t->cfg.undeclared.empty())
		t->cfg.undeclared = f->inner.cfg.undeclared;
	return 0;
}

static void fault_deinit(struct target *t)
{
	auto *f = static_cast<struct fault *>(t->priv);
	if (f->inner.ops->deinit)
		f->inner.ops->deinit(&f->inner);
	delete f;
	t->priv = nullptr;
}

static struct tq *inner_tq(struct tq *tq)
{
	return static_cast<::tq *>(tq->priv);
}

static const struct target_ops *inner_ops(const struct tq *tq)
{
	return static_cast<const struct fault *>(tq->t->priv)->inner.ops;
}

/* The wrapped target sees the same queue, as itself, with its own per-queue state. */
static int fault_queue_init(struct tq *tq)
{
	auto *f = static_cast<struct fault *>(tq->t->priv);
	tq->priv = new ::tq{tq->q, &f->inner, nullptr, tq->q_id, tq->depth};
	int ret = f->inner.ops->queue_init ? f->inner.ops->queue_init(inner_tq(tq)) : 0;
	if (ret < 0) {
		delete inner_tq(tq);
		tq->priv = nullptr;
	}
	return ret;
}

static void fault_queue_deinit(struct tq *tq)
{
	if (inner_ops(tq)->queue_deinit)
		inner_ops(tq)->queue_deinit(inner_tq(tq));
	delete inner_tq(tq);
	tq->priv = nullptr;
}

static int fault_queue_io(struct tq *tq, struct request *req)
{
	auto *f = static_cast<struct fault *>(tq->t->priv);
	uint64_t n = ++f->seen;
	const struct range *r;
	if (f->fail_queue_after && n > f->fail_queue_after) {
		queue_fail(tq, "fault: --fail-queue-after " + std::to_string(f->fail_queue_after) + " reached");
		req->result = -EIO;
		return QUEUE_IO_DONE;
	}
	if (f->fail_after && n > f->fail_after) {
		req->result = -EIO;
		return QUEUE_IO_DONE;
	}
	if ((r = hit(f->fail, req))) {
		req->result = -r->err;
		return QUEUE_IO_DONE;
	}
	if (hit(f->stall, req))
		return QUEUE_IO_PENDING; /* until the device stops: the engine fails it then */
	if (req->op == UBLK_IO_OP_READ && hit(f->corrupt, req))
		req->copy = true;
	if (f->delayed) {
		/* Each request waits on its own timeout: 64 delayed requests wait side by side. */
		io_uring_prep_timeout(tq_sqe(tq, req, FAULT_DELAY), &f->delay, 0, 0);
		return QUEUE_IO_PENDING;
	}
	return f->inner.ops->queue_io(inner_tq(tq), req);
}

static void fault_on_cqe(struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	auto *f = static_cast<struct fault *>(tq->t->priv);
	if (!req || cookie != FAULT_DELAY) {
		if (f->inner.ops->on_cqe)
			f->inner.ops->on_cqe(inner_tq(tq), req, cookie, cqe);
		return;
	}
	if (cqe->res != -ETIME) {
		request_complete(tq, req, -EIO); /* the timeout was cancelled or refused */
		return;
	}
	/* The delay is over: now the wrapped target describes the request, or keeps it (a discard). */
	if (f->inner.ops->queue_io(inner_tq(tq), req) == QUEUE_IO_DONE)
		request_complete(tq, req, req->result);
}

static void fault_on_release(struct tq *tq, struct request *req)
{
	if (inner_ops(tq)->on_release)
		inner_ops(tq)->on_release(inner_tq(tq), req);
}

static void fault_on_done(struct tq *tq, struct request *req, int32_t result)
{
	if (inner_ops(tq)->on_done)
		inner_ops(tq)->on_done(inner_tq(tq), req, result);
}

/* As the engine does without the op: the result is what the request is released with. */
static void fault_on_remote(struct tq *tq, struct request *req, const struct remote_completion &c)
{
	if (inner_ops(tq)->on_remote)
		inner_ops(tq)->on_remote(inner_tq(tq), req, c);
	else
		request_complete(tq, req, c.result);
}

static void fault_queue_idle(struct tq *tq)
{
	if (inner_ops(tq)->queue_idle)
		inner_ops(tq)->queue_idle(inner_tq(tq));
}

static bool fault_queue_settle(struct tq *tq)
{
	return inner_ops(tq)->queue_settle && inner_ops(tq)->queue_settle(inner_tq(tq));
}

static std::string fault_status(const struct target *t)
{
	const struct target *inner = &static_cast<const struct fault *>(t->priv)->inner;
	return inner->ops->status ? inner->ops->status(inner) : std::string();
}

static std::string fault_command(struct target *t, const std::string &cmd)
{
	struct target *inner = &static_cast<struct fault *>(t->priv)->inner;
	return inner->ops->command ? inner->ops->command(inner, cmd) : std::string("{\"ok\":false,\"error\":\"the wrapped target has no verbs\"}");
}

static enum member_fold fault_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	auto *f = static_cast<struct fault *>(tq->t->priv);
	char *buf = static_cast<char *>(request_buf(tq, req));
	if (req->copy && buf && res > 0) {
		/* Flip one byte in every 512-byte sector of the overlap: any checksum notices. */
		const struct member *m = &req->members[idx];
		for (const struct range &r : f->corrupt) {
			uint64_t lo = std::max(r.off, m->file_off), hi = std::min(r.off + r.len, m->file_off + m->len);
			for (uint64_t off = lo; off < hi; off += 512)
				buf[m->buf_off + (off - m->file_off)] ^= 0xff;
		}
	}
	const struct target_ops *inner = f->inner.ops;
	return inner->on_member ? inner->on_member(inner_tq(tq), req, idx, res) : FOLD_DEFAULT;
}

static const char *const fault_options[] = {"over", "delay-us", "fail-range", "stall-range", "corrupt-range", "fail-after", "fail-queue-after", nullptr};

static const struct target_ops fault_target_ops = {
	.name = "fault",
	.init = fault_init,
	.deinit = fault_deinit,
	.queue_init = fault_queue_init,
	.queue_deinit = fault_queue_deinit,
	.queue_io = fault_queue_io,
	.on_member = fault_on_member,
	.on_release = fault_on_release,
	.on_done = fault_on_done,
	.on_cqe = fault_on_cqe,
	.on_remote = fault_on_remote,
	.queue_idle = fault_queue_idle,
	.queue_settle = fault_queue_settle,
	.queue_ops = FAULT_INNER_QUEUE_OPS,
	.status = fault_status,
	.command = fault_command,
	.options = fault_options,
};
UBLK_TARGET(fault_target_ops)
