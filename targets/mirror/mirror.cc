/*
 * mirror: RAID1 over legs (fixed files 1..n, in --leg order), on one leased buffer.
 *
 * A write, flush, discard or write-zeroes is one member per writable leg (in sync or resyncing), all
 * issued together on the same lease; a read is one member on one in-sync leg, taken in turn. Before the
 * first write to a chunk whose bit is clear, the bit is set and written to the legs (mirror.h): after a
 * crash, only those chunks can differ between legs.
 *
 * A leg whose member fails is marked failed, and the superblocks of the others say so before the request
 * completes (meta.cc), so no later server reads a leg that missed an acknowledged write. Its failed write
 * is ignored (the other legs have the data); its failed read is retried on another leg. The last in-sync
 * leg is never marked failed (as md does): its errors go to the block layer.
 *
 * A discard on a block-device leg is a block discard, not a member (discard.h); the request then waits
 * for those as well as for its members.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>

#include "../../native/discard.h"
#include "mirror.h"

/* --resync-min-rate's default, bytes per second (README.md says why); never above --resync-rate. */
#define DEFAULT_MIN_RATE 4000000

/* Per queue (no sharing between queue threads): where the next read goes, each tag's block discards,
 * and whether a tag's request counts as a write in flight on its chunks. */
struct mirror_q {
	unsigned next_read;
	std::vector<struct discard_fanout> discards;
	std::vector<uint8_t> writing;
	/* Writes held until their chunks' bits are on the legs: one bitmap write per batch (queue_idle). */
	std::vector<struct request *> held;
	std::vector<uint8_t> holding;
	uint32_t files_gen;  /* the mirror's files_gen this ring's files match */
	int fds[MAX_LEGS];   /* what this ring has as files 1..MAX_LEGS */
	struct bitmap_q bm;
};

static int mirror_init(struct target *t)
{
	size_t n = t->cfg.fds.size();
	if (n < 1 || n > MAX_LEGS)
		return -EINVAL;
	auto *m = new mirror();
	m->n = (unsigned)n;
	/* Free slots for legs added while it runs (add-leg, replace): registered empty, filled by each queue. */
	t->cfg.fds.resize(MAX_LEGS, -1);
	m->block_discard = block_discard_files(t);
	m->rate = (uint64_t)t->cfg.num("resync-rate", 0);
	m->min_rate = (uint64_t)t->cfg.num("resync-min-rate", DEFAULT_MIN_RATE);
	m->t = t;
	int ret = posix_memalign(&m->meta_buf, 4096, 4096) ? -ENOMEM : mirror_bitmap_init(m, t->nr_queues);
	if (ret == 0)
		ret = mirror_assemble(t, m);
	if (ret < 0) {
		mirror_bitmap_deinit(m);
		free(m->meta_buf);
		delete m;
		return ret;
	}
	t->priv = m;
	sync_start(m);
	return 0;
}

static void mirror_deinit(struct target *t)
{
	auto *m = static_cast<struct mirror *>(t->priv);
	sync_stop(m);
	/* Clean only if no write is still in flight on a chunk (a forced teardown). */
	bool idle = true;
	for (uint64_t c = 0; c < m->nr_chunks && idle; c++)
		idle = !(m->chunks[c].load() & CHUNK_INFLIGHT);
	if (idle)
		mirror_close(m);
	mirror_bitmap_deinit(m);
	free(m->meta_buf);
	delete m;
	t->priv = nullptr;
}

static int mirror_queue_init(struct tq *tq)
{
	/* queues start on different legs */
	auto *mq = new mirror_q{tq->q_id, std::vector<struct discard_fanout>(tq->depth), std::vector<uint8_t>(tq->depth), {},
				std::vector<uint8_t>(tq->depth), 0, {}, {}};
	mq->held.reserve(tq->depth);
	for (unsigned i = 0; i < MAX_LEGS; i++)
		mq->fds[i] = tq->t->cfg.fds[i];
	tq->priv = mq;
	return 0;
}

static void mirror_queue_deinit(struct tq *tq)
{
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	free(mq->bm.buf);
	delete mq;
	tq->priv = nullptr;
}

/* The first leg of mask at or after `from` (wrapping), 0 if none. On every read: bit arithmetic, not a
 * walk over the slots. */
static unsigned leg_from(uint32_t mask, unsigned from)
{
	uint32_t after = from < 32 ? mask & ~((1u << from) - 1) : 0;
	return after ? (unsigned)__builtin_ctz(after) : mask ? (unsigned)__builtin_ctz(mask) : 0;
}

/* After a mask was read: a leg in it may be new to this ring (add-leg, replace). The masks are published
 * after files_gen, so a leg seen in a mask has its fd here. */
void mirror_refresh_files(struct tq *tq, struct mirror *m)
{
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	uint32_t gen = m->files_gen.load(std::memory_order_acquire);
	if (gen == mq->files_gen)
		return;
	mq->files_gen = gen;
	for (unsigned i = 0; i < MAX_LEGS; i++) {
		int fd = m->legs[i].fd.load();
		if (fd != mq->fds[i] && tq_set_file(tq, i + 1, fd) == 0)
			mq->fds[i] = fd;
	}
}

/* Not the leg's fault: cancelled at stop, or a leg that cannot discard (the block layer then writes
 * zeroes itself). Otherwise the leg is marked failed, unless it is the last in-sync one. Returns whether
 * the request goes on without the leg; if not, err is the request's. */
static bool leg_failed(struct mirror *m, unsigned i, const struct request *req, uint64_t off, int err, bool zeroing)
{
	if (err == ECANCELED || (zeroing && err == EOPNOTSUPP))
		return false;
	return mirror_fail_leg(m, i, req->op, off, err);
}

/* A mirror discards the whole request on each leg. */
static void whole_request(const struct tq *, const struct request *req, unsigned, uint64_t *off, uint64_t *len)
{
	*off = req->offset;
	*len = req->len;
}

/* The request's chunks count it as a write in flight. True if every one's bit is already on the legs;
 * else the clean ones want theirs, and the write waits for the batch's bitmap write (queue_idle). */
static bool start_write(struct mirror *m, const struct request *req)
{
	uint64_t c0 = req->offset >> m->chunk_shift, c1 = (req->offset + req->len - 1) >> m->chunk_shift;
	bool clean = false;
	for (uint64_t c = c0; c <= c1; c++) {
		if (!(m->chunks[c].fetch_add(CHUNK_WRITE) & CHUNK_SET)) {
			mirror_want(m, c);
			clean = true;
		}
		m->idle[c].store(0, std::memory_order_relaxed);
	}
	return !clean;
}

/* Whether chunks [c0, c1] all have their bits on the legs. */
static bool durable(struct mirror *m, uint64_t c0, uint64_t c1)
{
	for (uint64_t c = c0; c <= c1; c++)
		if (!(m->chunks[c].load() & CHUNK_SET))
			return false;
	return true;
}

static void mirror_on_done(struct tq *tq, struct request *req, int32_t)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	if (!mq->writing[req->tag])
		return;
	mq->writing[req->tag] = 0;
	uint64_t c0 = req->offset >> m->chunk_shift, c1 = (req->offset + req->len - 1) >> m->chunk_shift;
	for (uint64_t c = c0; c <= c1; c++)
		m->chunks[c].fetch_sub(1);
}

/* The members of a write, flush, discard or write-zeroes: every writable leg, in parallel on the same
 * buffer; block discards beside them. QUEUE_IO_PENDING when block discards went out (they complete it). */
static int issue_write(struct tq *tq, struct mirror *m, struct mirror_q *mq, struct request *req)
{
	enum member_kind kind = req->op == UBLK_IO_OP_WRITE   ? MEMBER_WRITE
				: req->op == UBLK_IO_OP_FLUSH ? MEMBER_FSYNC
							      : MEMBER_FALLOCATE;
	uint32_t mask = m->writable.load();
	mirror_refresh_files(tq, m);
	uint32_t blocks = req->op == UBLK_IO_OP_DISCARD && req->len ? mask & m->block_discard.load() : 0;
	for (uint32_t left = mask & ~blocks; left; left &= left - 1) {
		unsigned i = (unsigned)__builtin_ctz(left);
		struct member *mem = add_member(req, kind, (uint8_t)(i + 1));
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

static int mirror_queue_io(struct tq *tq, struct request *req)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	switch (req->op) {
	case UBLK_IO_OP_READ: {
		unsigned i = leg_from(m->readable.load(), mq->next_read);
		mirror_refresh_files(tq, m);
		mq->next_read = i + 1;
		struct member *mem = add_member(req, MEMBER_READ, (uint8_t)(i + 1));
		mem->len = req->len;
		mem->file_off = req->offset;
		return QUEUE_IO_DONE;
	}
	case UBLK_IO_OP_WRITE:
	case UBLK_IO_OP_FLUSH:
	case UBLK_IO_OP_DISCARD:
	case UBLK_IO_OP_WRITE_ZEROES:
		break;
	default:
		req->result = -EOPNOTSUPP;
		return QUEUE_IO_DONE;
	}
	if (req->len) {
		mq->writing[req->tag] = 1;
		if (!start_write(m, req)) {
			mq->holding[req->tag] = 1;
			mq->held.push_back(req);
			return QUEUE_IO_PENDING;
		}
	}
	return issue_write(tq, m, mq, req);
}

/* The held writes whose bits are on the legs now go (all fail if the bitmap reached no in-sync leg);
 * returns the bitmap blocks the others wait for (at most n). */
static unsigned release_held(struct tq *tq, struct mirror *m, struct mirror_q *mq, uint64_t *blocks, unsigned n)
{
	unsigned nr = 0;
	size_t keep = 0;
	for (size_t k = 0; k < mq->held.size(); k++) {
		struct request *req = mq->held[k];
		if (!mq->holding[req->tag])
			continue; /* released by a drain meanwhile */
		uint64_t c0 = req->offset >> m->chunk_shift, c1 = (req->offset + req->len - 1) >> m->chunk_shift;
		if (!m->meta_error && !durable(m, c0, c1)) {
			mq->held[keep++] = req;
			for (uint64_t c = c0; c <= c1; c++) {
				uint64_t b = c / BITMAP_BLOCK_CHUNKS;
				bool known = false;
				for (unsigned j = 0; j < nr; j++)
					known |= blocks[j] == b;
				if (!known && nr < n && !(m->chunks[c].load() & CHUNK_SET))
					blocks[nr++] = b;
			}
			continue;
		}
		mq->holding[req->tag] = 0;
		if (m->meta_error) {
			request_complete(tq, req, -EIO);
			continue;
		}
		int how = issue_write(tq, m, mq, req);
		request_run(tq, req);
		if (how == QUEUE_IO_DONE)
			request_complete(tq, req, 0);
	}
	mq->held.resize(keep);
	return nr;
}

/* The batch is handled: its held writes' bitmap blocks go to the legs (bitmap.cc), and the writes whose
 * bits are there go. */
static void mirror_queue_idle(struct tq *tq)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	auto *mq = static_cast<struct mirror_q *>(tq->priv);
	if (mq->held.empty())
		return;
	uint64_t blocks[MAX_BM_BLOCKS];
	unsigned n = release_held(tq, m, mq, blocks, MAX_BM_BLOCKS);
	if (n)
		bitmap_write(tq, m, &mq->bm, blocks, n);
}

static void mirror_on_release(struct tq *tq, struct request *req)
{
	static_cast<struct mirror_q *>(tq->priv)->holding[req->tag] = 0;
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
	mem->file = (uint8_t)(leg_from(m->readable.load(), i + 1) + 1);
	mirror_refresh_files(tq, m);
	return FOLD_RETRY;
}

/* A block discard on leg cookie - 1 completed, or (no request) a bitmap write or a wake-up. */
static void mirror_on_cqe(struct tq *tq, struct request *req, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	auto *m = static_cast<struct mirror *>(tq->t->priv);
	if (!req) {
		bitmap_on_cqe(tq, m, &static_cast<struct mirror_q *>(tq->priv)->bm, cookie, cqe);
		return;
	}
	int res = cqe->res < 0 && leg_failed(m, (unsigned)cookie - 1, req, req->offset, -cqe->res, true) ? 0 : cqe->res;
	discard_fanout_done(tq, req, &static_cast<struct mirror_q *>(tq->priv)->discards[req->tag], res, whole_request);
}

static std::string mirror_status(const struct target *t)
{
	return mirror_status_json(static_cast<struct mirror *>(t->priv));
}

static std::string mirror_command_op(struct target *t, const std::string &cmd)
{
	return mirror_command(static_cast<struct mirror *>(t->priv), cmd);
}

static const char *const mirror_options[] = {"block-discard", "lbs", "bitmap-chunk-shift", "assume-clean", "claim-legs", "resync-rate", "resync-min-rate", nullptr};

static const struct target_ops mirror_target_ops = {
	.name = "mirror",
	.init = mirror_init,
	.deinit = mirror_deinit,
	.queue_init = mirror_queue_init,
	.queue_deinit = mirror_queue_deinit,
	.queue_io = mirror_queue_io,
	.on_member = mirror_on_member,
	.on_release = mirror_on_release,
	.on_done = mirror_on_done,
	.on_cqe = mirror_on_cqe,
	.queue_idle = mirror_queue_idle,
	.queue_ops = BITMAP_QUEUE_OPS,
	.status = mirror_status,
	.command = mirror_command_op,
	.options = mirror_options,
};
UBLK_TARGET(mirror_target_ops)
