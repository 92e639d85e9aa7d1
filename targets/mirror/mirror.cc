/*
 * mirror: RAID1 over legs (fixed files 1..n, in --leg order), on one leased buffer.
 *
 * A write, flush, discard or write-zeroes is one member per healthy leg, all issued together on the same
 * lease; a read is one member on one healthy leg, taken in turn. A leg whose member fails is marked failed
 * (one atomic mask shared by every queue thread) and gets no more IO: its failed write is ignored, since
 * the other legs have the data, and its failed read is retried on another leg. The last healthy leg is
 * never marked failed (as md does): its errors go to the block layer instead, so every write that
 * succeeded is on every leg still marked healthy, and there is always a leg to read.
 *
 * A discard on a block-device leg is a block discard, not a member (discard.h); the request then waits
 * for those as well as for its members.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>

#include <atomic>
#include <string>
#include <vector>

#include "../../native/discard.h"

/* A write has one member per leg. */
#define MAX_LEGS MAX_MEMBERS

struct leg {
	/* Why the leg failed, for status(): written once by the queue thread that marked it failed, then
	 * published by `known` (status() runs on the JavaScript thread). */
	std::atomic<int> err{0};
	std::atomic<uint8_t> op{0};
	std::atomic<uint64_t> off{0};
	std::atomic<bool> known{false};
};

struct mirror {
	unsigned n;
	std::atomic<uint32_t> healthy; /* bit i: leg i (file i + 1) serves IO */
	uint32_t block_discard;        /* bit i: leg i discards with a block discard */
	struct leg legs[MAX_LEGS];
};

/* Per queue (no sharing between queue threads): where the next read goes, and each tag's block discards. */
struct mirror_q {
	unsigned next_read;
	std::vector<struct discard_fanout> discards;
};

static int mirror_init(struct target *t)
{
	size_t n = t->cfg.fds.size();
	if (n < 1 || n > MAX_LEGS)
		return -EINVAL;
	auto *m = new mirror();
	m->n = (unsigned)n;
	m->healthy = (uint32_t)((1ull << n) - 1);
	m->block_discard = block_discard_files(t);
	t->priv = m;
	return 0;
}

static void mirror_deinit(struct target *t)
{
	delete static_cast<struct mirror *>(t->priv);
	t->priv = nullptr;
}

static int mirror_queue_init(struct tq *tq)
{
	tq->priv = new mirror_q{tq->q_id, std::vector<struct discard_fanout>(tq->depth)}; /* queues start on different legs */
	return 0;
}

static void mirror_queue_deinit(struct tq *tq)
{
	delete static_cast<struct mirror_q *>(tq->priv);
	tq->priv = nullptr;
}

/* The first healthy leg at or after `from` (wrapping); the mask is never empty. */
static unsigned healthy_from(uint32_t mask, unsigned n, unsigned from)
{
	for (unsigned k = 0; k < n; k++) {
		unsigned i = (from + k) % n;
		if (mask & (1u << i))
			return i;
	}
	return 0;
}

/* Marks leg i failed, unless it is the last healthy one. Returns whether it is failed now. */
static bool fail_leg(struct mirror *m, unsigned i, const struct request *req, uint64_t off, int err)
{
	uint32_t bit = 1u << i, cur = m->healthy.load();
	do {
		if (!(cur & bit))
			return true; /* another request saw it fail first */
		if (cur == bit)
			return false;
	} while (!m->healthy.compare_exchange_weak(cur, cur & ~bit));
	struct leg *l = &m->legs[i];
	l->err.store(err, std::memory_order_relaxed);
	l->op.store(req->op, std::memory_order_relaxed);
	l->off.store(off, std::memory_order_relaxed);
	l->known.store(true, std::memory_order_release);
	return true;
}

/* Not the leg's fault: cancelled at stop, or a leg that cannot discard (the block layer then writes
 * zeroes itself). Otherwise the leg is marked failed, unless it is the last healthy one. Returns whether
 * the request goes on without the leg; if not, err is the request's. */
static bool leg_failed(struct mirror *m, unsigned i, const struct request *req, uint64_t off, int err, bool zeroing)
{
	if (err == ECANCELED || (zeroing && err == EOPNOTSUPP))
		return false;
	return fail_leg(m, i, req, off, err);
}

/* A mirror discards the whole request on each leg. */
static void whole_request(const struct tq *, const struct request *req, unsigned, uint64_t *off, uint64_t *len)
{
	*off = req->offset;
	*len = req->len;
}

static int mirror_queue_io(struct tq *tq, struct request *req)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	uint32_t mask = m->healthy.load();
	struct member *mem;
	if (req->op == UBLK_IO_OP_READ) {
		unsigned i = healthy_from(mask, m->n, mq->next_read);
		mq->next_read = i + 1;
		mem = add_member(req, MEMBER_READ, (uint8_t)(i + 1));
		mem->len = req->len;
		mem->file_off = req->offset;
		return QUEUE_IO_DONE;
	}
	enum member_kind kind;
	switch (req->op) {
	case UBLK_IO_OP_WRITE:
		kind = MEMBER_WRITE;
		break;
	case UBLK_IO_OP_FLUSH:
		kind = MEMBER_FSYNC;
		break;
	case UBLK_IO_OP_DISCARD:
	case UBLK_IO_OP_WRITE_ZEROES:
		kind = MEMBER_FALLOCATE;
		break;
	default:
		req->result = -EOPNOTSUPP;
		return QUEUE_IO_DONE;
	}
	/* Every healthy leg, in parallel on the same buffer; block discards beside the members. */
	uint32_t blocks = req->op == UBLK_IO_OP_DISCARD && req->len ? mask & m->block_discard : 0;
	for (unsigned i = 0; i < m->n; i++) {
		if (!(mask & ~blocks & (1u << i)))
			continue;
		mem = add_member(req, kind, (uint8_t)(i + 1));
		if (kind == MEMBER_FSYNC)
			continue;
		mem->len = req->len;
		mem->file_off = req->offset;
		if (kind == MEMBER_WRITE && (req->flags & UBLK_IO_F_FUA))
			mem->rw_flags = RWF_DSYNC;
		if (kind == MEMBER_FALLOCATE)
			mem->mode = zeroing_mode(req);
	}
	if (!blocks)
		return QUEUE_IO_DONE;
	discard_fanout_start(tq, req, &mq->discards[req->tag], blocks, whole_request);
	return QUEUE_IO_PENDING;
}

static enum member_fold mirror_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	struct member *mem = &req->members[idx];
	bool transfer = mem->kind == MEMBER_READ || mem->kind == MEMBER_WRITE;
	if (res > 0 || (res == 0 && !transfer))
		return FOLD_DEFAULT;
	unsigned i = mem->file - 1;
	/* res 0 on a transfer: the leg ended inside the request. */
	if (!leg_failed(m, i, req, mem->file_off, res < 0 ? -res : EIO, mem->kind == MEMBER_FALLOCATE))
		return FOLD_DEFAULT;
	if (mem->kind != MEMBER_READ)
		return FOLD_IGNORE;
	/* The same bytes from another leg; each failure marks a leg, so this ends within n tries. */
	mem->file = (uint8_t)(healthy_from(m->healthy.load(), m->n, i + 1) + 1);
	return FOLD_RETRY;
}

/* A block discard on leg cookie - 1 completed. */
static void mirror_on_cqe(struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	int res = cqe->res < 0 && leg_failed(m, (unsigned)cookie - 1, req, req->offset, -cqe->res, true) ? 0 : cqe->res;
	discard_fanout_done(tq, req, &static_cast<struct mirror_q *>(tq->priv)->discards[req->tag], res, whole_request);
}

static const char *op_name(uint8_t op)
{
	switch (op) {
	case UBLK_IO_OP_READ:
		return "read";
	case UBLK_IO_OP_WRITE:
		return "write";
	case UBLK_IO_OP_FLUSH:
		return "flush";
	case UBLK_IO_OP_DISCARD:
		return "discard";
	case UBLK_IO_OP_WRITE_ZEROES:
		return "write-zeroes";
	}
	return "request";
}

/* {"mirror":"clean|degraded","legs":"ok,failed",...} and, per failed leg, "legN":"<why>". Flat: the
 * server merges it into the device record's info. */
static std::string mirror_status(const struct target *t)
{
	auto *m = static_cast<const struct mirror *>(t->priv);
	uint32_t mask = m->healthy.load();
	std::string legs, why;
	for (unsigned i = 0; i < m->n; i++) {
		bool ok = mask & (1u << i);
		legs += std::string(i ? "," : "") + (ok ? "ok" : "failed");
		const struct leg *l = &m->legs[i];
		if (ok || !l->known.load(std::memory_order_acquire))
			continue;
		int err = l->err.load(std::memory_order_relaxed);
		const char *name = strerrorname_np(err), *desc = strerrordesc_np(err);
		why += ",\"leg" + std::to_string(i + 1) + "\":\"failed: " + op_name(l->op.load(std::memory_order_relaxed)) +
		       " at byte " + std::to_string(l->off.load(std::memory_order_relaxed)) + ": " +
		       (name ? name : "errno " + std::to_string(err)) + (desc ? std::string(" (") + desc + ")" : "") + "\"";
	}
	bool clean = mask == (uint32_t)((1ull << m->n) - 1);
	return std::string("{\"mirror\":\"") + (clean ? "clean" : "degraded") + "\",\"legs\":\"" + legs + "\"" + why + "}";
}

static const struct target_ops mirror_target_ops = {
	.name = "mirror",
	.init = mirror_init,
	.deinit = mirror_deinit,
	.queue_init = mirror_queue_init,
	.queue_deinit = mirror_queue_deinit,
	.queue_io = mirror_queue_io,
	.on_member = mirror_on_member,
	.on_cqe = mirror_on_cqe,
	.status = mirror_status,
};
UBLK_TARGET(mirror_target_ops)
