/*
 * stripe: RAID0 over legs (fixed files 1..n, in --leg order), on one leased buffer.
 *
 * The device is cut into chunks; chunk c lives on leg c % n at (c / n) * chunk. A read or write is split
 * at chunk boundaries and each piece is one member at its own offset in the request's buffer, all in
 * parallel on the same lease. A request with more pieces than a request has members reuses each member
 * that finished for the next piece (FOLD_RETRY). A discard or write-zeroes is one member per leg: a leg's
 * chunks inside a range sit back to back on it; on a block-device leg a discard is a block discard
 * instead (discard.h). A flush goes to every leg.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>

#include <algorithm>
#include <vector>

#include "../../native/discard.h"

struct stripe {
	unsigned n;
	unsigned shift; /* log2(chunk) */
	uint32_t block_discard; /* bit i: leg i discards with a block discard */
};

/* Per queue, per tag: where the next piece of a read or write not yet described starts, and the block
 * discards of a discard. */
struct stripe_q {
	std::vector<uint32_t> next;
	std::vector<struct discard_fanout> discards;
};

static int stripe_init(struct target *t)
{
	size_t n = t->cfg.fds.size();
	int64_t shift = t->cfg.num("chunk-shift", 17);
	/* A flush or discard has one member per leg. */
	if (n < 1 || n > MAX_MEMBERS || shift < 12 || shift > 30)
		return -EINVAL;
	t->priv = new stripe{(unsigned)n, (unsigned)shift, block_discard_files(t)};
	return 0;
}

static void stripe_deinit(struct target *t)
{
	delete static_cast<struct stripe *>(t->priv);
	t->priv = nullptr;
}

static int stripe_queue_init(struct tq *tq)
{
	tq->priv = new stripe_q{std::vector<uint32_t>(tq->depth), std::vector<struct discard_fanout>(tq->depth)};
	return 0;
}

static void stripe_queue_deinit(struct tq *tq)
{
	delete static_cast<struct stripe_q *>(tq->priv);
	tq->priv = nullptr;
}

/* Makes *m the piece of req that starts `pos` bytes into it; returns its length. */
static uint32_t piece(const struct stripe *s, const struct request *req, struct member *m, uint32_t pos)
{
	uint64_t off = req->offset + pos, c = off >> s->shift, within = off & ((1ull << s->shift) - 1);
	uint32_t len = (uint32_t)std::min<uint64_t>((1ull << s->shift) - within, req->len - pos);
	m->file = (uint8_t)(1 + c % s->n);
	m->file_off = ((c / s->n) << s->shift) + within;
	m->buf_off = pos;
	m->len = len;
	return len;
}

/* Leg `leg`'s share of [off, off + len): the chunks of the range on that leg are consecutive rows of it,
 * so the share is one range (partial only where the whole range starts or ends mid-chunk). */
static bool leg_share(const struct stripe *s, uint64_t off, uint64_t len, unsigned leg, uint64_t *lo, uint64_t *hi)
{
	uint64_t mask = (1ull << s->shift) - 1, c0 = off >> s->shift, c1 = (off + len - 1) >> s->shift;
	uint64_t first = c0 + (leg + s->n - c0 % s->n) % s->n;
	if (first > c1)
		return false;
	uint64_t last = c1 - (c1 % s->n + s->n - leg) % s->n;
	*lo = ((first / s->n) << s->shift) + (first == c0 ? off & mask : 0);
	*hi = ((last / s->n) << s->shift) + (last == c1 ? ((off + len - 1) & mask) + 1 : mask + 1);
	return true;
}

/* Leg i's share of a discard, as a range on the leg; only asked for a leg that has one. */
static void share_range(const struct tq *tq, const struct request *req, unsigned i, uint64_t *off, uint64_t *len)
{
	uint64_t lo = 0, hi = 0;
	leg_share(static_cast<const struct stripe *>(tq->t->priv), req->offset, req->len, i, &lo, &hi);
	*off = lo;
	*len = hi - lo;
}

static int stripe_queue_io(struct tq *tq, struct request *req)
{
	auto *s = static_cast<struct stripe *>(tq->t->priv);
	struct member *m;
	switch (req->op) {
	case UBLK_IO_OP_READ:
	case UBLK_IO_OP_WRITE: {
		uint32_t pos = 0;
		while (pos < req->len && req->nr_members < MAX_MEMBERS) {
			m = add_member(req, req->op == UBLK_IO_OP_READ ? MEMBER_READ : MEMBER_WRITE, 0);
			if (req->op == UBLK_IO_OP_WRITE && (req->flags & UBLK_IO_F_FUA))
				m->rw_flags = RWF_DSYNC;
			pos += piece(s, req, m, pos);
		}
		static_cast<struct stripe_q *>(tq->priv)->next[req->tag] = pos;
		break;
	}
	case UBLK_IO_OP_FLUSH:
		for (unsigned i = 0; i < s->n; i++)
			add_member(req, MEMBER_FSYNC, (uint8_t)(i + 1));
		break;
	case UBLK_IO_OP_DISCARD:
	case UBLK_IO_OP_WRITE_ZEROES: {
		uint32_t blocks = 0;
		for (unsigned i = 0; i < s->n; i++) {
			uint64_t lo, hi;
			if (!req->len || !leg_share(s, req->offset, req->len, i, &lo, &hi))
				continue;
			if (req->op == UBLK_IO_OP_DISCARD && (s->block_discard & (1u << i))) {
				blocks |= 1u << i;
				continue;
			}
			m = add_member(req, MEMBER_FALLOCATE, (uint8_t)(i + 1));
			m->mode = zeroing_mode(req);
			m->file_off = lo;
			m->len = (uint32_t)(hi - lo);
		}
		if (blocks) {
			discard_fanout_start(tq, req, &static_cast<struct stripe_q *>(tq->priv)->discards[req->tag], blocks, share_range);
			return QUEUE_IO_PENDING;
		}
		break;
	}
	default:
		req->result = -EOPNOTSUPP;
	}
	return QUEUE_IO_DONE;
}

/* A piece is done: its member carries the next piece, if any is left (FOLD_RETRY). The engine counts what
 * the finished piece covered before the member changes, so a request of more than MAX_MEMBERS pieces runs
 * in rounds on the same members. */
static enum member_fold stripe_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	if (req->op != UBLK_IO_OP_READ && req->op != UBLK_IO_OP_WRITE)
		return FOLD_DEFAULT;
	auto *s = static_cast<struct stripe *>(tq->t->priv);
	uint32_t &next = static_cast<struct stripe_q *>(tq->priv)->next[req->tag];
	if (res <= 0)
		next = req->len; /* the request fails: describe nothing more */
	if (next >= req->len)
		return FOLD_DEFAULT;
	next += piece(s, req, &req->members[idx], next);
	return FOLD_RETRY;
}

/* A block discard on leg cookie - 1 completed: any error is the request's. */
static void stripe_on_cqe(struct tq *tq, struct request *req, uint64_t, const struct io_uring_cqe *cqe)
{
	discard_fanout_done(tq, req, &static_cast<struct stripe_q *>(tq->priv)->discards[req->tag], cqe->res, share_range);
}

static const char *const stripe_options[] = {"chunk-shift", "block-discard", nullptr};

static const struct target_ops stripe_target_ops = {
	.name = "stripe",
	.init = stripe_init,
	.deinit = stripe_deinit,
	.queue_init = stripe_queue_init,
	.queue_deinit = stripe_queue_deinit,
	.queue_io = stripe_queue_io,
	.on_member = stripe_on_member,
	.on_cqe = stripe_on_cqe,
	.options = stripe_options,
};
UBLK_TARGET(stripe_target_ops)
