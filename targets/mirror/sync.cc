/*
 * mirror: the sync thread, one per mirror. It copies to resyncing legs what they missed, records how far
 * it got (a checkpoint a crash resumes from), clears the bitmap's bits once every leg has their chunks,
 * and scrubs (check, --repair). It reads and writes the legs with plain pread/pwrite on its own buffer:
 * a copy between legs has no block request, so no lease to ride on.
 *
 * A copy races with user writes to the same chunk, which go to every writable leg: it starts only when no
 * write is in flight on the chunk, and is done again if one started meanwhile (the chunk's count moved),
 * so a copy of old bytes never lands after a newer write.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "mirror.h"

#define PIECE (1u << 20)          /* bytes moved per read or write */
#define CHUNKS_PER_STEP 64u       /* then the thread looks at stop, checkpoints and sweeps */
#define CHECKPOINT_NS 1000000000ull
#define SWEEP_NS 5000000000ull    /* a bit is cleared after two sweeps found its chunk idle */
#define MAX_RANGES 32u

uint64_t now_ns()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct bufs {
	void *p[MAX_LEGS] = {};
	bufs()
	{
		for (auto &b : p)
			if (posix_memalign(&b, 4096, PIECE))
				b = nullptr;
	}
	~bufs()
	{
		for (auto b : p)
			free(b);
	}
	bool ok() const
	{
		return std::all_of(std::begin(p), std::end(p), [](void *b) { return b != nullptr; });
	}
};

static void note(struct mirror *m, const std::string &what)
{
	std::lock_guard<std::mutex> g(m->note_lock);
	m->last_event = what;
}

/* Waits until no write is in flight on chunk c; returns its word then. */
static uint32_t quiet(struct mirror *m, uint64_t c)
{
	for (;;) {
		uint32_t w = m->chunks[c].load();
		if (!(w & CHUNK_INFLIGHT))
			return w;
		struct timespec ts = {0, 200000};
		nanosleep(&ts, nullptr);
	}
}

/* Whether a write started on chunk c since its word was w. */
static bool overtaken(struct mirror *m, uint64_t c, uint32_t w)
{
	uint32_t now = m->chunks[c].load();
	return chunk_gen(now) != chunk_gen(w) || (now & CHUNK_INFLIGHT);
}

/* Copies chunk c from an in-sync leg (the first one, or `from`) to the legs in `to`. Returns the legs it
 * reached (a leg that fails on the way is failed), or -1 if no in-sync leg could be read. */
static int64_t copy_chunk(struct mirror *m, uint64_t c, uint32_t to, int from, struct bufs &b)
{
	uint64_t start = c << m->chunk_shift, end = std::min(m->data_size.load(), start + chunk_bytes(m));
	for (;;) {
		uint32_t src_mask = m->readable.load() & ~to;
		if (from >= 0)
			src_mask &= 1u << from;
		if (!src_mask)
			return -1;
		unsigned src = (unsigned)__builtin_ctz(src_mask);
		uint32_t w = quiet(m, c);
		bool again = false;
		for (uint64_t off = start; off < end && !again; off += PIECE) {
			size_t len = (size_t)std::min<uint64_t>(PIECE, end - off);
			int ret = leg_io(m->legs[src].fd, b.p[0], len, off, LEG_READ);
			if (ret < 0) {
				if (!mirror_fail_leg(m, src, UBLK_IO_OP_READ, off, -ret))
					return -1;
				again = true;
				break;
			}
			for (unsigned i = 0; i < m->n; i++) {
				if (!(to & (1u << i)))
					continue;
				ret = leg_io(m->legs[i].fd, b.p[0], len, off, LEG_WRITE);
				if (ret < 0) {
					mirror_fail_leg(m, i, UBLK_IO_OP_WRITE, off, -ret);
					to &= ~(1u << i);
				}
			}
		}
		if (!again && !overtaken(m, c, w))
			return to;
	}
}

/* ---- resync ---- */

static uint32_t resyncing(struct mirror *m)
{
	uint32_t mask = 0;
	for (unsigned i = 0; i < m->n; i++)
		if (m->legs[i].state.load() == LEG_RESYNC)
			mask |= 1u << i;
	return mask;
}

/* Legs whose copy reached the end join the in-sync legs. */
static void finish_legs(struct mirror *m, uint32_t legs)
{
	std::string done;
	{
		std::lock_guard<std::mutex> g(m->lock);
		for (unsigned i = 0; i < m->n; i++) {
			struct leg *l = &m->legs[i];
			if (!(legs & (1u << i)) || l->state.load() != LEG_RESYNC || l->pos.load() < m->nr_chunks)
				continue;
			done += (done.empty() ? "" : ",") + std::to_string(i + 1);
			if (l->replaces >= 0) {
				done += " (now leg " + std::to_string(l->replaces + 1) + ")";
				mirror_swap_in_locked(m, i);
				continue;
			}
			l->state = LEG_IN_SYNC;
			l->full = false;
			l->pos = 0;
			m->readable.fetch_or(1u << i);
		}
		if (done.empty())
			return;
		meta_write_sb_locked(m, false);
	}
	note(m, "resync of leg " + done + " ended");
}

/* The resync's rate now, from whether user IO is active (shown by status()). */
static uint64_t rate_now(struct mirror *m, struct user_io_watch *watch, uint64_t now)
{
	uint64_t sum = target_requests(m->t);
	uint64_t cap = m->rate.load(), low = resync_floor(cap, m->min_rate.load());
	bool yielding = watch->active(sum, now) && low != cap;
	m->yielding.store(yielding, std::memory_order_relaxed);
	return yielding ? low : cap;
}

/* Waits until `copied` bytes are due at `rate` bytes per second since t0, or the rates change (`mirror
 * rate`); true if the thread is to stop (a stop does not wait for the rate). */
static bool pace(struct mirror *m, uint64_t t0, uint64_t copied, uint64_t rate)
{
	uint64_t due = t0 + (uint64_t)((double)copied * 1e9 / (double)rate), t = now_ns();
	std::unique_lock<std::mutex> lk(m->thread_lock);
	uint32_t gen = m->rates_gen;
	if (due > t)
		m->wake.wait_for(lk, std::chrono::nanoseconds(due - t), [m, gen] { return m->stop || m->rates_gen != gen; });
	return m->stop;
}

/* Paces a resync or a check chunk by chunk: at the cap while the legs are the device's alone, at the floor
 * while user IO is active (rate_now, asked anew after each chunk). */
struct pacer {
	struct mirror *m;
	struct user_io_watch *watch;
	uint64_t t0, done = 0, rate;
	pacer(struct mirror *mm, struct user_io_watch *w) : m(mm), watch(w), t0(now_ns()), rate(rate_now(mm, w, t0)) {}
	/* `bytes` more were moved: waits until they are due; true if the thread is to stop. */
	bool moved(uint64_t bytes)
	{
		done += bytes;
		uint64_t t = now_ns(), r = rate_now(m, watch, t);
		if (r != rate) {
			rate = r;
			t0 = t;
			done = 0;
		}
		return rate && pace(m, t0, done, rate);
	}
};

/* Up to CHUNKS_PER_STEP chunks of the resync; false when there is none to do. */
static bool resync_step(struct mirror *m, struct bufs &b, struct user_io_watch *watch)
{
	uint32_t legs = resyncing(m);
	if (!legs)
		return false;
	uint64_t cursor = UINT64_MAX;
	for (unsigned i = 0; i < m->n; i++)
		if (legs & (1u << i))
			cursor = std::min(cursor, m->legs[i].pos.load());
	struct pacer pacer(m, watch);
	for (unsigned k = 0; k < CHUNKS_PER_STEP && cursor < m->nr_chunks; k++, cursor++) {
		uint32_t at = 0, need = 0;
		bool dirty = m->chunks[cursor].load() & CHUNK_SET;
		for (unsigned i = 0; i < m->n; i++) {
			const struct leg *l = &m->legs[i];
			if (!(legs & (1u << i)) || l->pos.load() > cursor)
				continue;
			at |= 1u << i;
			if (dirty || (l->full.load() && cursor >= l->full_from))
				need |= 1u << i;
		}
		uint64_t bytes = 0;
		if (need) {
			if (copy_chunk(m, cursor, need, -1, b) < 0) {
				note(m, "resync stopped: no in-sync leg could be read at byte " + std::to_string(cursor << m->chunk_shift));
				return false;
			}
			bytes = std::min(chunk_bytes(m), m->data_size - (cursor << m->chunk_shift));
			m->resync_copied += bytes;
		}
		for (unsigned i = 0; i < m->n; i++)
			if (at & (1u << i))
				m->legs[i].pos = cursor + 1;
		if (need && pacer.moved(bytes))
			return true;
	}
	if (cursor >= m->nr_chunks)
		finish_legs(m, legs);
	return true;
}

/* ---- scrub ---- */

static void add_range(struct scrub *s, uint64_t off, uint64_t len)
{
	std::lock_guard<std::mutex> g(s->lock);
	if (s->nr_ranges >= MAX_RANGES)
		return;
	s->ranges += (s->ranges.empty() ? "" : ",") + std::to_string(off) + "+" + std::to_string(len);
	s->nr_ranges++;
}

/* The leg a repair copies from: the one named, else one most legs agree with, else the first. */
static int majority(struct mirror *m, uint32_t legs, size_t len, struct bufs &b)
{
	unsigned best = 0;
	int who = -1;
	for (unsigned i = 0; i < m->n; i++) {
		if (!(legs & (1u << i)))
			continue;
		unsigned same = 0;
		for (unsigned j = 0; j < m->n; j++)
			same += (legs & (1u << j)) && !memcmp(b.p[i], b.p[j], len);
		if (who < 0 || same > best) {
			best = same;
			who = (int)i;
		}
	}
	return who;
}

/* Compares chunk c on every in-sync leg; with repair, rewrites the others from the chosen leg. */
static void scrub_chunk(struct mirror *m, uint64_t c, struct bufs &b)
{
	struct scrub *s = &m->scrub;
	uint64_t start = c << m->chunk_shift, end = std::min(m->data_size.load(), start + chunk_bytes(m));
	for (uint64_t off = start; off < end; off += PIECE) {
		size_t len = (size_t)std::min<uint64_t>(PIECE, end - off);
		for (;;) {
			uint32_t legs = m->readable.load(), w = quiet(m, c), differ = 0;
			unsigned first = (unsigned)__builtin_ctz(legs);
			bool failed = false;
			for (unsigned i = 0; i < m->n && !failed; i++) {
				if (!(legs & (1u << i)))
					continue;
				int ret = leg_io(m->legs[i].fd, b.p[i], len, off, LEG_READ);
				if (ret < 0) {
					failed = true;
					if (!mirror_fail_leg(m, i, UBLK_IO_OP_READ, off, -ret)) {
						s->running = false; /* the last in-sync leg: nothing to compare it with */
						return;
					}
				} else if (memcmp(b.p[first], b.p[i], len)) {
					differ |= 1u << i;
				}
			}
			if (failed || overtaken(m, c, w))
				continue; /* read again: the legs changed, or a write moved the bytes */
			if (!differ)
				break;
			s->mismatched += len;
			add_range(s, off, len);
			if (s->repair.load()) {
				int from = s->from.load() >= 0 ? s->from.load() : majority(m, legs, len, b);
				if (copy_chunk(m, c, legs & ~(1u << from), from, b) >= 0)
					s->repaired += end - start;
				return; /* the whole chunk was rewritten */
			}
			break;
		}
	}
}

static bool scrub_step(struct mirror *m, struct bufs &b, struct user_io_watch *watch)
{
	struct scrub *s = &m->scrub;
	if (!s->running.load())
		return false;
	if (__builtin_popcount(m->readable.load()) < 2) {
		s->running = false;
		note(m, "check stopped: fewer than two legs are in sync");
		return false;
	}
	struct pacer pacer(m, watch);
	for (unsigned k = 0; k < CHUNKS_PER_STEP && s->pos.load() < m->nr_chunks; k++) {
		uint64_t c = s->pos.load();
		scrub_chunk(m, c, b);
		s->pos++;
		if (pacer.moved(std::min(chunk_bytes(m), m->data_size - (c << m->chunk_shift))))
			return true;
	}
	if (s->pos.load() >= m->nr_chunks) {
		s->running = false;
		note(m, "check ended: " + std::to_string(s->mismatched.load()) + " bytes mismatched" +
				(s->repair.load() ? ", " + std::to_string(s->repaired.load()) + " rewritten" : ""));
	}
	return true;
}

/* ---- bitmap clearing and checkpoints ---- */

/* Once every leg is in sync, a set bit whose chunk two sweeps found idle is cleared. False if a queue's
 * bitmap write was in flight: the sweep writes the bitmap, and tries again on the thread's next turn. */
static bool sweep(struct mirror *m)
{
	uint32_t present = 0;
	for (unsigned i = 0; i < m->n; i++)
		present |= m->legs[i].state.load() != LEG_EMPTY ? 1u << i : 0;
	std::lock_guard<std::mutex> g(m->lock);
	if (m->bm_writer >= 0)
		return false;
	if (m->readable.load() != present || m->meta_error)
		return true;
	uint64_t lo = UINT64_MAX, hi = 0;
	bool told = false;
	/* Only the chunks whose bits are set: by the bitmap's words. */
	for (uint64_t k = 0; k < m->bm_words.len; k++)
		for (uint64_t bits = m->bm_words[k]; bits; bits &= bits - 1) {
			uint64_t c = k * 64 + (uint64_t)__builtin_ctzll(bits);
			uint32_t w = m->chunks[c].load();
			if (!(w & CHUNK_SET) || (w & CHUNK_INFLIGHT) || !m->idle[c].exchange(1))
				continue;
			if (!told && m->events_cleared != m->events) {
				/* A leg that stops getting writes from here on can no longer rely on the bitmap alone. */
				m->events_cleared = m->events + 1;
				meta_write_sb_locked(m, false);
				if (m->readable.load() != present)
					return true; /* a leg failed writing it: its chunks' bits stay */
			}
			told = true;
			/* A writer that comes now finds the bit clear and sets it again under this lock. */
			if (m->chunks[c].compare_exchange_strong(w, w & ~CHUNK_SET)) {
				m->bm_words[k] &= ~(1ull << (c % 64));
				m->dirty.fetch_sub(1, std::memory_order_relaxed);
				lo = std::min(lo, c);
				hi = c;
			}
		}
	if (lo != UINT64_MAX)
		meta_write_bitmap_locked(m, lo, hi);
	return true;
}

static void checkpoint(struct mirror *m, uint64_t *last)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < m->n; i++)
		sum += m->legs[i].state.load() == LEG_RESYNC ? m->legs[i].pos.load() + 1 : 0;
	if (sum == *last)
		return;
	*last = sum;
	/* The copies below the position are on the legs' media before the position is. */
	for (unsigned i = 0; i < m->n; i++)
		if (m->legs[i].state.load() == LEG_RESYNC && fdatasync(m->legs[i].fd) < 0)
			mirror_fail_leg(m, i, UBLK_IO_OP_FLUSH, 0, errno);
	std::lock_guard<std::mutex> g(m->lock);
	meta_write_sb_locked(m, false);
}

static void sync_main(struct mirror *m)
{
	struct bufs b;
	struct user_io_watch watch;
	uint64_t last_ckpt = now_ns(), last_sweep = last_ckpt, ckpt_sum = 0;
	bool was_resyncing = false, busy = false;
	std::unique_lock<std::mutex> lk(m->thread_lock);
	while (!m->stop) {
		lk.unlock();
		/* After a wait: the requests taken meanwhile may be long over; a moment of yielding for them
		 * would only slow a resync that just started. Ongoing IO shows again after one chunk. */
		if (!busy)
			watch.restart(target_requests(m->t));
		bool pending = resyncing(m) != 0;
		if (pending && !was_resyncing) {
			m->resync_started_ns = now_ns();
			m->resync_copied = 0;
			note(m, "resync started");
		}
		was_resyncing = pending;
		bool resync = pending && b.ok() && resync_step(m, b, &watch);
		busy = resync || (b.ok() && scrub_step(m, b, &watch));
		uint64_t t = now_ns();
		if (t - last_ckpt >= CHECKPOINT_NS) {
			checkpoint(m, &ckpt_sum);
			last_ckpt = t;
		}
		if (t - last_sweep >= SWEEP_NS && sweep(m))
			last_sweep = t;
		lk.lock();
		if (!busy && !m->stop)
			m->wake.wait_for(lk, std::chrono::seconds(1));
	}
}

void sync_start(struct mirror *m)
{
	m->thread = std::thread(sync_main, m);
}

void sync_stop(struct mirror *m)
{
	if (!m->thread.joinable())
		return;
	{
		std::lock_guard<std::mutex> g(m->thread_lock);
		m->stop = true;
	}
	m->wake.notify_all();
	m->thread.join();
}

void sync_rates(struct mirror *m, uint64_t rate, uint64_t min_rate)
{
	std::lock_guard<std::mutex> g(m->thread_lock);
	m->rate = rate;
	m->min_rate = min_rate;
	m->rates_gen++;
	m->wake.notify_all();
}

void sync_kick(struct mirror *m)
{
	std::lock_guard<std::mutex> g(m->thread_lock);
	m->wake.notify_all();
}
