/*
 * mirror: the state one mirror shares between its queue threads, its sync thread and JavaScript.
 *
 * What must outlive the server lives on the legs (meta.h): each leg ends with a superblock (the array's
 * uuid, an event counter, every leg's state and resync position) and a write-intent bitmap (one bit per
 * chunk: set and durable before the first write to a clean chunk, cleared lazily once every leg has it).
 * Reads go to in-sync legs only; writes to in-sync and resyncing legs; the sync thread (sync.cc) copies
 * what a returning leg missed, checkpoints, clears bits and scrubs.
 */
#pragma once
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "../../native/target.h"

/* A write has one member per leg. */
#define MAX_LEGS MAX_MEMBERS

enum leg_state : uint8_t {
	LEG_IN_SYNC = 0, /* read and written */
	LEG_FAILED = 1,  /* neither: it misses writes from here on */
	LEG_RESYNC = 2,  /* written, not read, until the sync thread has copied what it missed */
	LEG_EMPTY = 3,   /* a slot with no leg (removed) */
};

/* A chunk's word: writes in flight (low 16 bits), its bit in the bitmap (SET: durable on the legs; WANT: a
 * write waits for it), and a count of writes started (high bits, wrapping), by which a copy tells that a
 * write overtook it. */
#define CHUNK_INFLIGHT 0xffffu
#define CHUNK_SET (1u << 16)
#define CHUNK_WANT (1u << 17)
#define CHUNK_WRITE ((1u << 18) | 1u)
static inline uint32_t chunk_gen(uint32_t w)
{
	return w >> 18;
}

struct leg {
	std::atomic<int> fd{-1};
	uint64_t size;       /* bytes */
	uint64_t sb_off;     /* its superblock */
	uint64_t bitmap_off; /* its bitmap */
	std::atomic<uint8_t> state{LEG_IN_SYNC};
	std::atomic<bool> full{false};   /* resync every chunk (a new leg), not only the bitmap's */
	std::atomic<uint64_t> pos{0};    /* resync: chunks below this one are done */
	std::atomic<int> replaces{-1};   /* written under lock: once in sync, it takes this slot's place */
	uint64_t full_from = 0;          /* with full: every chunk from here on is copied, below only the bitmap's */
	/* Why it failed, for status(): written under the mirror's lock, published by `known`. */
	std::atomic<int> err{0};
	std::atomic<uint8_t> op{0};
	std::atomic<uint64_t> off{0};
	std::atomic<bool> known{false};
};

struct scrub {
	std::atomic<bool> requested{false}, running{false}, repair{false};
	std::atomic<int> from{-1};            /* --repair's source leg, or -1: the majority, else the first */
	std::atomic<uint64_t> pos{0};         /* chunks checked */
	std::atomic<uint64_t> mismatched{0};  /* bytes */
	std::atomic<uint64_t> repaired{0};    /* bytes */
	std::mutex lock;                      /* ranges */
	std::string ranges;                   /* "off+len,..." of the first mismatches */
	unsigned nr_ranges = 0;
};

/* How long after the queues last took a request the resync still counts user IO as active. */
#define YIELD_NS 500000000ull

/* The resync's view of user IO: the device's request count (target_requests), between chunks. */
struct user_io_watch {
	uint64_t seen = 0;     /* the sum at the last look */
	uint64_t moved_ns = 0; /* when it last moved; 0: never */
	/* Whether user IO is active: the sum moved within YIELD_NS of now. */
	bool active(uint64_t sum, uint64_t now)
	{
		if (sum != seen) {
			seen = sum;
			moved_ns = now;
		}
		return moved_ns && now - moved_ns < YIELD_NS;
	}
	/* Counts from here: IO the thread did not see because it slept is not IO now (md, too, counts a
	 * resync's user IO from its start). */
	void restart(uint64_t sum)
	{
		seen = sum;
		moved_ns = 0;
	}
};

/* The resync's rate in bytes per second while user IO is active (md's speed_limit_min): min_rate, but
 * never above the cap `rate` (md's speed_limit_max; 0: none). */
static inline uint64_t resync_floor(uint64_t rate, uint64_t min_rate)
{
	return rate && rate < min_rate ? rate : min_rate;
}

/* A table indexed by chunk that grows in place while queues use it (`resize`): its address space is
 * reserved for `cap` entries up front (no memory until used), and growing makes more of it usable. */
template <typename T> struct chunk_table {
	T *p = nullptr;
	uint64_t cap = 0, len = 0;
	static uint64_t bytes(uint64_t n)
	{
		uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
		return (n * sizeof(T) + page - 1) / page * page;
	}
	/* Room for `cap` entries, `len` of them usable and zero. 0 or -errno. */
	int reserve(uint64_t reserve_cap, uint64_t n)
	{
		void *a = mmap(nullptr, bytes(reserve_cap), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (a == MAP_FAILED)
			return -errno;
		p = static_cast<T *>(a);
		cap = reserve_cap;
		return grow(n);
	}
	/* Entries [0, n) usable; the new ones zero. 0 or -errno. */
	int grow(uint64_t n)
	{
		if (n > cap)
			return -ENOSPC;
		if (n > len && mprotect(p, bytes(n), PROT_READ | PROT_WRITE) < 0)
			return -errno;
		for (uint64_t i = len; i < n; i++)
			new (&p[i]) T();
		len = n > len ? n : len;
		return 0;
	}
	T &operator[](uint64_t i) const { return p[i]; }
	~chunk_table()
	{
		if (p)
			munmap(p, bytes(cap));
	}
};

/* A running mirror grows to this many times its chunks at start (or 2^24 chunks) without a restart. */
#define GROW_FACTOR 4
#define GROW_MIN_CHUNKS (1ull << 24)

struct mirror {
	std::atomic<unsigned> n;            /* slots in use; grows with add-leg */
	std::atomic<uint32_t> block_discard; /* bit i: leg i discards with a block discard */
	/* Bumped (after the fd, before the masks) when a slot's fd changes: each queue puts the slots' fds
	 * into its ring before it sends a member to them. */
	std::atomic<uint32_t> files_gen{0};
	std::atomic<uint32_t> readable;     /* bit i: leg i is in sync */
	std::atomic<uint32_t> writable;     /* bit i: leg i is in sync or resyncing */
	struct leg legs[MAX_LEGS];

	/* The array: written under `lock` (the superblocks and bitmap blocks on the legs are written under
	 * it too, so two writes of one block never cross). */
	std::mutex lock;
	uint8_t uuid[16];
	std::atomic<uint64_t> events{0}; /* read by status() without the lock */
	uint64_t events_cleared = 0;
	/* Written under lock (assembly, resize); read by queues, the sync thread and status() without it. */
	std::atomic<uint64_t> data_size{0};
	unsigned chunk_shift = 16;
	std::atomic<uint64_t> nr_chunks{0};
	bool meta_error = false;            /* a superblock could not be written to the last in-sync leg */
	void *meta_buf = nullptr;           /* 4 KiB aligned scratch for metadata writes, under lock */
	chunk_table<std::atomic<uint32_t>> chunks;
	chunk_table<std::atomic<uint8_t>> idle; /* a sweep found the chunk idle; a write clears it */
	/* The bitmap by words of 64 chunks, so that a bitmap write costs its block's 512 words, not a look at
	 * each of its 32768 chunks: `bm_words`, under lock, as the legs have it or a write in flight carries
	 * it (SET chunks, and WANT ones a write took); `wanted`, the WANT chunks no write took yet, set by the
	 * queues without the lock and taken by the next write of their block. */
	chunk_table<uint64_t> bm_words;
	chunk_table<std::atomic<uint64_t>> wanted;
	std::atomic<uint64_t> dirty{0};     /* chunks whose bit is SET: written under lock, read by status() */

	/* The sync thread. */
	std::thread thread;
	std::mutex thread_lock;
	std::condition_variable wake;
	bool stop = false;
	uint32_t rates_gen = 0;             /* under thread_lock: bumped when `rate` changes them */
	std::atomic<uint64_t> rate{0};      /* resync bytes per second; 0: as fast as the legs go */
	std::atomic<uint64_t> min_rate{0};  /* resync bytes per second while user IO is active (> 0) */
	const struct target *t;             /* the device's: its request count */
	std::atomic<bool> yielding{false};  /* the resync or the check is at min_rate for user IO */
	std::atomic<uint64_t> resync_copied{0}, resync_total{0}, resync_done{0};
	std::atomic<uint64_t> resync_started_ns{0};
	std::mutex note_lock;               /* never held across IO: status() takes it on the JavaScript thread */
	std::string last_event;             /* the sync thread's last note (started, ended) */
	struct scrub scrub;

	/* The queues' bitmap writes (bitmap.cc), under `lock`: which queue has one in flight (-1: none),
	 * which queues wait for it to end, and each queue's wake-up eventfd (owned here, so a late wake
	 * never writes to an fd a stopping queue has closed). */
	int bm_writer = -1;
	std::condition_variable bm_idle;    /* bm_writer became -1 (a resize waits for it) */
	std::vector<uint8_t> bm_waiting;
	std::vector<int> wake_fds;
};

static inline uint64_t chunk_bytes(const struct mirror *m)
{
	return 1ull << m->chunk_shift;
}

/* meta.cc */
enum { LEG_READ, LEG_WRITE, LEG_WRITE_DSYNC };
/* A whole transfer to or from a leg outside the rings (pread/pwrite); a short one is -EIO. */
int leg_io(int fd, void *buf, size_t len, uint64_t off, int how);
/* Under m->lock: bumps the event counter and writes every writable leg's superblock. A leg whose write
 * fails is marked failed (unless it is the last in-sync one). */
void meta_write_sb_locked(struct mirror *m, bool clean);
/* Under m->lock, with no queue's bitmap write in flight (meta_lock_bitmap): writes the bitmap blocks
 * holding chunks [c0, c1] to every writable leg; a bit a write waits for (WANT) is in them, and SET once
 * they are written. */
void meta_write_bitmap_locked(struct mirror *m, uint64_t c0, uint64_t c1);
/* Chunks per bitmap block (4 KiB), and words of bm_words. */
#define BITMAP_BLOCK_CHUNKS (4096u * 8)
#define BITMAP_BLOCK_WORDS (BITMAP_BLOCK_CHUNKS / 64)
/* Words of a bitmap of nr_chunks bits. */
static inline uint64_t bitmap_words(uint64_t nr_chunks)
{
	return (nr_chunks + 63) / 64;
}
/* Chunk c's write waits for its bit (WANT), without the lock. */
static inline void mirror_want(struct mirror *m, uint64_t c)
{
	m->chunks[c].fetch_or(CHUNK_WANT);
	m->wanted[c / 64].fetch_or(1ull << (c % 64));
}
/* Chunk c's bit (SET) as the legs have it, under m->lock: when the legs' bitmap is read. */
static inline void mirror_set_bit_locked(struct mirror *m, uint64_t c)
{
	if (!(m->chunks[c].fetch_or(CHUNK_SET) & CHUNK_SET))
		m->dirty.fetch_add(1, std::memory_order_relaxed);
	m->bm_words[c / 64] |= 1ull << (c % 64);
}
/* Under m->lock: bitmap block b as the legs should have it into buf, with the wanted bits no write took
 * yet, which it takes into taken[BITMAP_BLOCK_WORDS]; whether it took any. */
bool meta_bitmap_block_locked(struct mirror *m, uint64_t b, uint8_t *buf, uint64_t *taken);
/* Under m->lock: block b is on the legs: the chunks whose bits it took are SET. */
void meta_bitmap_written_locked(struct mirror *m, uint64_t b, const uint64_t *taken);
/* Block b did not reach the legs: the bits it took are wanted again, by the next write. */
void meta_bitmap_untaken(struct mirror *m, uint64_t b, const uint64_t *taken);
/* m->lock, once no queue's bitmap write is in flight: a bitmap write under the lock (which blocks the
 * next queue's) must not cross one, or the older snapshot could land last and unset a bit the newer one
 * made durable. The verbs' writes of the bitmap wait here; the sweep tries again later. */
std::unique_lock<std::mutex> meta_lock_bitmap(struct mirror *m);
/* Under m->lock: a metadata write to leg i failed: the leg goes (true), unless it is the last in-sync one
 * (then meta_error). */
bool meta_drop_on_error_locked(struct mirror *m, unsigned i, uint64_t off, int err);
/* Marks leg i failed (unless it is the last in-sync leg) and records it on the others before returning.
 * Returns whether it is failed now. */
bool mirror_fail_leg(struct mirror *m, unsigned i, uint8_t op, uint64_t off, int err);
/* Under m->lock: leg i fails (its bits leave both masks); the caller writes the superblocks. */
void mirror_drop_leg_locked(struct mirror *m, unsigned i, uint8_t op, uint64_t off, int err);
/* The clean stop: superblocks marked clean. */
void mirror_close(struct mirror *m);

/* assemble.cc */
/* Reads the legs' superblocks and settles the array (a new one, or the legs' own, with the freshest
 * legs winning); writes the superblocks back, marked in use. 0 or -errno with t->error set. */
int mirror_assemble(struct target *t, struct mirror *m);

/* reshape.cc */
/* A failed or removed leg takes writes again and is resynced: from the bitmap if its own superblock is
 * recent enough, else whole. 0 or -errno. */
int mirror_readd(struct mirror *m, unsigned i);
/* A leg the running mirror did not start with, in a new slot (fd owned by the caller, open until the
 * device stops), resynced whole; with replaces >= 0, once in sync it takes that slot's place and the old
 * leg leaves. Returns its slot, or -errno with *why. */
int mirror_add_leg(struct mirror *m, int fd, bool block_discard, int replaces, std::string *why);
/* Under lock: a new leg that replaced another is in sync: it moves into the old one's slot. */
void mirror_swap_in_locked(struct mirror *m, unsigned from);
/* `resize`: the device holds `size` bytes from now on (more than before): file legs too small grow, the
 * bytes added are zeroed on every leg, the metadata moves to each leg's new end. Every leg must be in
 * sync. 0, or -errno with *why. On libuv's pool: it blocks. */
int mirror_grow(struct mirror *m, uint64_t size, std::string *why);
/* A failed leg leaves the array (its slot is empty; the bitmap may be cleared without it). -EBUSY if it
 * is not failed. */
int mirror_remove(struct mirror *m, unsigned i);

/* bitmap.cc: a queue's writes of the bitmap blocks its held writes wait for, through its ring. */
#define MAX_BM_BLOCKS 4
struct bitmap_q {
	uint8_t *buf = nullptr;           /* MAX_BM_BLOCKS blocks, aligned for O_DIRECT legs */
	uint64_t blocks[MAX_BM_BLOCKS];
	uint64_t taken[MAX_BM_BLOCKS][BITMAP_BLOCK_WORDS]; /* the wanted bits each block took */
	unsigned nr_blocks = 0;
	unsigned left = 0;                /* leg writes in flight */
	uint32_t mask = 0;                /* the legs written */
	uint32_t failed = 0;              /* the legs whose write failed */
	int err[MAX_LEGS];
	bool cancelled = false;
	bool armed = false;               /* a read of the wake-up eventfd is in flight */
	uint64_t wake_val = 0;
};
/* Queue-wide ring operations a mirror's queue keeps in flight at most. */
#define BITMAP_QUEUE_OPS (MAX_LEGS * MAX_BM_BLOCKS + 1)
int mirror_bitmap_init(struct mirror *m, unsigned nr_queues);
void mirror_bitmap_deinit(struct mirror *m);
/* Writes the bitmap blocks to every writable leg (at most MAX_BM_BLOCKS), unless this queue's last is
 * still in flight; if another queue's is, waits for its end. The held writes are checked again after. */
void bitmap_write(struct tq *tq, struct mirror *m, struct bitmap_q *bq, const uint64_t *blocks, unsigned n);
/* A queue-wide operation of the mirror completed. */
void bitmap_on_cqe(struct tq *tq, struct mirror *m, struct bitmap_q *bq, uint64_t cookie, const struct io_uring_cqe *cqe);

/* mirror.cc: puts new legs' fds into this queue's ring (after a mask was read). */
void mirror_refresh_files(struct tq *tq, struct mirror *m);

/* sync.cc */
uint64_t now_ns();
void sync_start(struct mirror *m);
void sync_stop(struct mirror *m);
void sync_kick(struct mirror *m);
/* The resync's cap and floor from now on (a pacing resync or check takes them at once). */
void sync_rates(struct mirror *m, uint64_t rate, uint64_t min_rate);

/* verbs.cc */
/* `ublk-ts mirror <verb>`: "fail L", "re-add L", "remove L", "check [repair [L]]" (L from 1), "rate MAX
 * MIN" (bytes per second, each a number or - to keep it); and
 * `resize`'s "grow BYTES". Returns {"ok":true,"message":...} or {"ok":false,"error":...}. On libuv's pool: it may block. */
std::string mirror_command(struct mirror *m, const std::string &cmd);
/* The flat JSON object `list` merges into the device's info. */
std::string mirror_status_json(struct mirror *m);
