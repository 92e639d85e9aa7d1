/*
 * mirror: what lives on the legs, and how a mirror is put together from them.
 *
 * The last 4 KiB of each leg (rounded down to 4 KiB) is its superblock; just before it, the write-intent
 * bitmap (one bit per chunk, in 4 KiB blocks); the data area is [0, data_size), the same on every leg,
 * so a leg's first data_size bytes are the device's bytes (cmp, dd and mount see them as they are).
 *
 * Freshness is md's: every change of the array's state bumps an event counter written to every leg that
 * still takes writes, so a leg that missed writes carries an older count. The freshest superblock says
 * what each leg is; an older leg is resynced: only the bitmap's chunks if no bit was cleared since it was
 * last written (its count is at least events_cleared), else every chunk.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mirror.h"

#define SB_BYTES 4096u
#define META_ALIGN 4096u
#define SB_VERSION 1u
static const char SB_MAGIC[8] = {'u', 'b', 'l', 'k', 'm', 'i', 'r', '1'};

struct sb_leg {
	uint8_t state; /* enum leg_state */
	uint8_t full;  /* a resync of every chunk from pos on */
	uint8_t replaces; /* resyncing to take slot replaces - 1's place (0: none) */
	uint8_t pad[5];
	uint64_t pos;  /* resync: chunks below are done */
};

/* On disk, little-endian (the x86 and arm64 hosts ublk runs on). */
struct disk_sb {
	char magic[8];
	uint32_t version;
	uint32_t csum; /* FNV-1a of the 4 KiB block with this field 0 */
	uint8_t uuid[16];
	uint64_t events;
	uint64_t events_cleared; /* the count when a bit was last cleared */
	uint64_t data_size;
	uint32_t chunk_shift;
	uint32_t nr_legs;
	uint32_t leg;            /* this leg's slot */
	uint32_t clean;          /* 1: stopped cleanly, no write was in flight */
	struct sb_leg legs[MAX_LEGS];
};
static_assert(sizeof(struct disk_sb) <= SB_BYTES, "superblock fits its block");

static uint32_t fnv1a(const void *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ static_cast<const uint8_t *>(p)[i]) * 16777619u;
	return h;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static uint64_t bitmap_bytes(uint64_t nr_chunks)
{
	return round_up((nr_chunks + 7) / 8, META_ALIGN);
}

/* Where a leg of `size` bytes keeps its superblock and a bitmap of nr_chunks bits. */
static void layout(struct leg *l, uint64_t nr_chunks)
{
	l->sb_off = l->size / META_ALIGN * META_ALIGN - SB_BYTES;
	l->bitmap_off = l->sb_off - bitmap_bytes(nr_chunks);
}

static int leg_size(int fd, uint64_t *size)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode))
		return ioctl(fd, BLKGETSIZE64, size) < 0 ? -errno : 0;
	*size = (uint64_t)st.st_size;
	return 0;
}

struct aligned {
	void *p = nullptr;
	explicit aligned(size_t n)
	{
		if (posix_memalign(&p, META_ALIGN, n))
			p = nullptr;
		else
			memset(p, 0, n);
	}
	~aligned() { free(p); }
};

int leg_io(int fd, void *buf, size_t len, uint64_t off, int how)
{
	struct iovec iov = {buf, len};
	ssize_t r = how == LEG_READ ? preadv2(fd, &iov, 1, (off_t)off, 0)
				    : pwritev2(fd, &iov, 1, (off_t)off, how == LEG_WRITE_DSYNC ? RWF_DSYNC : 0);
	if (r < 0)
		return -errno;
	return (size_t)r == len ? 0 : -EIO;
}

/* Metadata is durable before anything relies on it. */
static int xfer(int fd, void *buf, size_t len, uint64_t off, bool write)
{
	return leg_io(fd, buf, len, off, write ? LEG_WRITE_DSYNC : LEG_READ);
}

void mirror_drop_leg_locked(struct mirror *m, unsigned i, uint8_t op, uint64_t off, int err)
{
	uint32_t bit = 1u << i;
	m->readable.fetch_and(~bit);
	m->writable.fetch_and(~bit);
	struct leg *l = &m->legs[i];
	l->state = LEG_FAILED;
	l->err.store(err, std::memory_order_relaxed);
	l->op.store(op, std::memory_order_relaxed);
	l->off.store(off, std::memory_order_relaxed);
	l->known.store(true, std::memory_order_release);
}

bool meta_drop_on_error_locked(struct mirror *m, unsigned i, uint64_t off, int err)
{
	if (m->readable.load() == (1u << i)) {
		m->meta_error = true;
		return false;
	}
	mirror_drop_leg_locked(m, i, UBLK_IO_OP_WRITE, off, -err);
	return true;
}

void meta_write_sb_locked(struct mirror *m, bool clean)
{
	auto *sb = static_cast<struct disk_sb *>(m->meta_buf);
again:
	m->events++;
	memset(sb, 0, SB_BYTES);
	memcpy(sb->magic, SB_MAGIC, sizeof(sb->magic));
	sb->version = SB_VERSION;
	memcpy(sb->uuid, m->uuid, sizeof(sb->uuid));
	sb->events = m->events;
	sb->events_cleared = m->events_cleared;
	sb->data_size = m->data_size;
	sb->chunk_shift = m->chunk_shift;
	sb->nr_legs = m->n;
	sb->clean = clean;
	for (unsigned i = 0; i < m->n; i++) {
		sb->legs[i].state = m->legs[i].state.load();
		sb->legs[i].full = m->legs[i].full.load();
		sb->legs[i].pos = m->legs[i].pos.load();
		sb->legs[i].replaces = (uint8_t)(m->legs[i].replaces.load() + 1);
	}
	uint32_t mask = m->writable.load();
	for (unsigned i = 0; i < m->n; i++) {
		if (!(mask & (1u << i)))
			continue;
		sb->leg = i;
		sb->csum = 0;
		sb->csum = fnv1a(sb, SB_BYTES);
		int ret = xfer(m->legs[i].fd, sb, SB_BYTES, m->legs[i].sb_off, true);
		/* The superblocks already written name the leg in sync: write them all again without it. */
		if (ret < 0 && meta_drop_on_error_locked(m, i, m->legs[i].sb_off, ret))
			goto again;
	}
}

bool meta_bitmap_block_locked(struct mirror *m, uint64_t b, uint8_t *buf)
{
	const uint64_t per_block = BITMAP_BLOCK_CHUNKS;
	memset(buf, 0, META_ALIGN);
	uint64_t end = std::min(m->nr_chunks.load(), (b + 1) * per_block);
	bool wanted = false;
	for (uint64_t c = b * per_block; c < end; c++) {
		uint32_t w = m->chunks[c].load(std::memory_order_relaxed);
		wanted |= w & CHUNK_WANT;
		if (w & (CHUNK_SET | CHUNK_WANT))
			buf[(c % per_block) / 8] |= (uint8_t)(1u << (c % 8));
	}
	return wanted;
}

void meta_bitmap_written_locked(struct mirror *m, uint64_t b, const uint8_t *buf)
{
	const uint64_t per_block = BITMAP_BLOCK_CHUNKS;
	uint64_t end = std::min(m->nr_chunks.load(), (b + 1) * per_block);
	for (uint64_t c = b * per_block; c < end; c++)
		if (buf[(c % per_block) / 8] & (1u << (c % 8)) && (m->chunks[c].load(std::memory_order_relaxed) & CHUNK_WANT))
			m->chunks[c].fetch_or(CHUNK_SET), m->chunks[c].fetch_and(~CHUNK_WANT);
}

void meta_write_bitmap_locked(struct mirror *m, uint64_t c0, uint64_t c1)
{
	auto *buf = static_cast<uint8_t *>(m->meta_buf);
	for (uint64_t b = c0 / BITMAP_BLOCK_CHUNKS; b <= c1 / BITMAP_BLOCK_CHUNKS; b++) {
		bool wanted = meta_bitmap_block_locked(m, b, buf);
		uint32_t mask = m->writable.load();
		bool dropped = false;
		for (unsigned i = 0; i < m->n; i++) {
			if (!(mask & (1u << i)))
				continue;
			int ret = xfer(m->legs[i].fd, buf, META_ALIGN, m->legs[i].bitmap_off + b * META_ALIGN, true);
			if (ret < 0)
				dropped |= meta_drop_on_error_locked(m, i, m->legs[i].bitmap_off, ret);
		}
		if (dropped)
			meta_write_sb_locked(m, false);
		/* What this write carried is durable now: the writes waiting for it may go. */
		if (wanted && !m->meta_error)
			meta_bitmap_written_locked(m, b, buf);
	}
}

bool mirror_fail_leg(struct mirror *m, unsigned i, uint8_t op, uint64_t off, int err)
{
	std::lock_guard<std::mutex> g(m->lock);
	uint32_t bit = 1u << i;
	/* Whoever failed it first wrote the superblocks before letting go of the lock. */
	if (!(m->writable.load() & bit))
		return true;
	if (m->readable.load() == bit)
		return false; /* the last in-sync leg: its errors go to the block layer, as md's do */
	mirror_drop_leg_locked(m, i, op, off, err);
	meta_write_sb_locked(m, false);
	return true;
}

void mirror_close(struct mirror *m)
{
	std::lock_guard<std::mutex> g(m->lock);
	meta_write_sb_locked(m, true);
}

/* ---- assembly ---- */

static bool sb_valid(const struct disk_sb *sb)
{
	if (memcmp(sb->magic, SB_MAGIC, sizeof(SB_MAGIC)) || sb->version != SB_VERSION || sb->nr_legs > MAX_LEGS)
		return false;
	uint32_t want = sb->csum;
	auto *block = const_cast<struct disk_sb *>(sb);
	block->csum = 0;
	bool ok = fnv1a(sb, SB_BYTES) == want;
	block->csum = want;
	return ok;
}

/* The bytes a new array would take at the end of a leg are not ours unless they are zero. */
static int tail_is_free(struct leg *l, uint64_t from, std::string *why)
{
	size_t len = (size_t)(l->sb_off + SB_BYTES - from);
	aligned buf(len);
	if (!buf.p)
		return -ENOMEM;
	int ret = xfer(l->fd, buf.p, len, from, false);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < len; i++)
		if (static_cast<uint8_t *>(buf.p)[i]) {
			*why = "holds data where the mirror's metadata would go (its last " + std::to_string(len / 1024) +
			       " KiB); --claim-legs lets a new mirror write there";
			return -EEXIST;
		}
	return 0;
}

struct found {
	bool readable = false; /* its superblock block could be read */
	bool valid = false;
	aligned block{SB_BYTES};
	const struct disk_sb *sb() const { return static_cast<const struct disk_sb *>(block.p); }
};

static int refuse(struct target *t, unsigned i, const std::string &what, int err)
{
	t->error = "--leg " + std::to_string(i + 1) + " " + what;
	return err;
}

/* A new array over legs that hold no superblock. */
static int create(struct target *t, struct mirror *m, std::vector<found> &legs)
{
	uint64_t lbs = (uint64_t)t->cfg.num("lbs", 512), align = std::max<uint64_t>(lbs, META_ALIGN);
	m->chunk_shift = (unsigned)t->cfg.num("bitmap-chunk-shift", 16);
	if (getrandom(m->uuid, sizeof(m->uuid), 0) != (ssize_t)sizeof(m->uuid))
		return -errno;
	uint64_t data = UINT64_MAX;
	bool first = true;
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		if (l->fd < 0)
			continue;
		if (!legs[i].readable)
			return refuse(t, i, "cannot be read", -EIO);
		if (l->size < 4 * META_ALIGN)
			return refuse(t, i, "is too small for a mirror leg", -ENOSPC);
		layout(l, (l->size + chunk_bytes(m) - 1) >> m->chunk_shift);
		data = std::min(data, l->bitmap_off / align * align);
	}
	m->data_size = data;
	m->nr_chunks = (data + chunk_bytes(m) - 1) >> m->chunk_shift;
	bool claim = t->cfg.num("claim-legs", 0), clean = t->cfg.num("assume-clean", 0);
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		if (l->fd < 0) {
			l->state = LEG_EMPTY;
			continue;
		}
		layout(l, m->nr_chunks);
		std::string why;
		int ret = claim ? 0 : tail_is_free(l, data, &why);
		if (ret < 0)
			return refuse(t, i, why.empty() ? std::string("cannot be read: ") + strerror(-ret) : why, ret);
		/* The first leg is the copy the others are made from (md's initial resync). */
		bool copy = !first && !clean;
		first = false;
		l->state = copy ? LEG_RESYNC : LEG_IN_SYNC;
		l->full = copy;
	}
	return 0;
}

/* What leg i is, given its superblock and the freshest one. */
static int place(struct target *t, struct mirror *m, unsigned i, const found &f, const struct disk_sb *fresh)
{
	struct leg *l = &m->legs[i];
	if (l->fd < 0) {
		l->state = LEG_EMPTY; /* resynced whole if it is given again */
		return 0;
	}
	layout(l, m->nr_chunks);
	if (!f.readable) {
		l->state = LEG_FAILED;
		return 0;
	}
	if (l->bitmap_off < m->data_size)
		return refuse(t, i, "is too small for this mirror (" + std::to_string(m->data_size) + " bytes of data)", -ENOSPC);
	const struct sb_leg &said = fresh->legs[i];
	if (!f.valid) {
		std::string why;
		int ret = t->cfg.num("claim-legs", 0) ? 0 : tail_is_free(l, m->data_size, &why);
		if (ret < 0)
			return refuse(t, i, why, ret);
		l->state = LEG_RESYNC; /* a new leg: every chunk */
		l->full = true;
		return 0;
	}
	const struct disk_sb *sb = f.sb();
	if (memcmp(sb->uuid, fresh->uuid, sizeof(sb->uuid)))
		return refuse(t, i, "belongs to another mirror", -EEXIST);
	if (sb->leg != i)
		return refuse(t, i, "is leg " + std::to_string(sb->leg + 1) + " of this mirror: give the legs in their order", -EINVAL);
	if (sb->events == fresh->events || said.state == LEG_RESYNC) {
		/* As the freshest superblock says (a resync that crashed between two superblock writes
		 * resumes from the position it recorded). A leg that says it failed is back: resync it. */
		l->state = said.state == LEG_FAILED || said.state == LEG_EMPTY ? (uint8_t)LEG_RESYNC : said.state;
		l->full = said.state == LEG_EMPTY || (said.state == LEG_RESYNC && said.full);
		l->pos = said.state == LEG_RESYNC ? said.pos : 0;
		/* A replace goes on: once in sync, the leg still takes the old one's place. */
		l->replaces = said.state == LEG_RESYNC && said.replaces && said.replaces <= fresh->nr_legs ? said.replaces - 1 : -1;
		if (said.state == LEG_FAILED && sb->events < fresh->events_cleared)
			l->full = true;
		return 0;
	}
	/* Stale: it missed what happened after its own count. */
	l->state = LEG_RESYNC;
	l->full = said.state == LEG_EMPTY || sb->events < fresh->events_cleared;
	return 0;
}

/* Two legs that each say the other failed were written apart: neither is a copy of the other. */
static int split_brain(struct target *t, struct mirror *m, std::vector<found> &legs)
{
	for (unsigned i = 0; i < m->n; i++)
		for (unsigned j = i + 1; j < m->n; j++) {
			if (!legs[i].valid || !legs[j].valid)
				continue;
			const struct disk_sb *a = legs[i].sb(), *b = legs[j].sb();
			if (memcmp(a->uuid, b->uuid, sizeof(a->uuid)) || a->leg != i || b->leg != j)
				continue;
			if (a->legs[j].state == LEG_FAILED && b->legs[i].state == LEG_FAILED) {
				t->error = "--leg " + std::to_string(i + 1) + " and --leg " + std::to_string(j + 1) +
					   " each ran without the other (events " + std::to_string(a->events) + " and " +
					   std::to_string(b->events) + "): start the mirror with only the leg to keep";
				return -EEXIST;
			}
		}
	return 0;
}

/* Every bit any fresh leg has: a write in flight at a crash may be on one leg only. */
static int load_bitmap(struct mirror *m, std::vector<found> &legs, const struct disk_sb *fresh)
{
	uint64_t len = bitmap_bytes(m->nr_chunks);
	aligned buf(len);
	if (!buf.p)
		return -ENOMEM;
	for (unsigned i = 0; i < m->n; i++) {
		if (!legs[i].valid || legs[i].sb()->events != fresh->events)
			continue;
		if (xfer(m->legs[i].fd, buf.p, len, m->legs[i].bitmap_off, false) < 0)
			continue;
		auto *bits = static_cast<const uint8_t *>(buf.p);
		for (uint64_t c = 0; c < m->nr_chunks; c++)
			if (bits[c / 8] & (1u << (c % 8)))
				m->chunks[c].fetch_or(CHUNK_SET);
	}
	return 0;
}

int mirror_assemble(struct target *t, struct mirror *m)
{
	std::vector<found> legs(m->n);
	const struct disk_sb *fresh = nullptr;
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		l->fd = t->cfg.fds[i];
		if (l->fd < 0)
			continue; /* `--leg missing`: an empty slot */
		int ret = leg_size(l->fd, &l->size);
		if (ret < 0)
			return refuse(t, i, std::string("cannot be sized: ") + strerror(-ret), ret);
		if (!legs[i].block.p)
			return -ENOMEM;
		if (l->size < 4 * META_ALIGN)
			continue;
		legs[i].readable = xfer(l->fd, legs[i].block.p, SB_BYTES, l->size / META_ALIGN * META_ALIGN - SB_BYTES, false) == 0;
		legs[i].valid = legs[i].readable && sb_valid(legs[i].sb());
		if (legs[i].valid && (!fresh || legs[i].sb()->events > fresh->events))
			fresh = legs[i].sb();
	}
	bool made = !fresh;
	int ret;
	if (made) {
		ret = create(t, m, legs);
	} else {
		if (fresh->nr_legs != m->n) {
			t->error = "this mirror has " + std::to_string(fresh->nr_legs) + " legs; --leg is given " + std::to_string(m->n) + " times";
			return -EINVAL;
		}
		memcpy(m->uuid, fresh->uuid, sizeof(m->uuid));
		m->events = fresh->events;
		m->events_cleared = fresh->events_cleared;
		m->data_size = fresh->data_size;
		m->chunk_shift = fresh->chunk_shift;
		m->nr_chunks = (m->data_size + chunk_bytes(m) - 1) >> m->chunk_shift;
		ret = split_brain(t, m, legs);
		for (unsigned i = 0; ret == 0 && i < m->n; i++)
			ret = place(t, m, i, legs[i], fresh);
	}
	if (ret < 0)
		return ret;
	uint64_t cap = std::max<uint64_t>(m->nr_chunks * GROW_FACTOR, GROW_MIN_CHUNKS);
	if ((ret = m->chunks.reserve(cap, m->nr_chunks)) < 0 || (ret = m->idle.reserve(cap, m->nr_chunks)) < 0)
		return ret;
	if (!made && (ret = load_bitmap(m, legs, fresh)) < 0)
		return ret;
	uint32_t readable = 0, writable = 0;
	for (unsigned i = 0; i < m->n; i++) {
		uint8_t s = m->legs[i].state;
		readable |= s == LEG_IN_SYNC ? 1u << i : 0;
		writable |= s == LEG_IN_SYNC || s == LEG_RESYNC ? 1u << i : 0;
	}
	if (!readable) {
		t->error = "no leg of this mirror is in sync (each missed writes the others have): nothing to serve from";
		return -EIO;
	}
	/* A crash may have left writes on some in-sync legs only: the first one is the copy; the others
	 * take its dirty chunks (md's resync after an unclean stop). */
	bool unclean = !made && !fresh->clean;
	if (unclean)
		for (unsigned i = (unsigned)__builtin_ctz(readable) + 1; i < m->n; i++)
			if (readable & (1u << i)) {
				readable &= ~(1u << i);
				m->legs[i].state = LEG_RESYNC;
			}
	/* A resync resumes where it stopped; after a crash it also looks again at the bitmap's chunks below
	 * that point (writes that were in flight there). */
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		l->full_from = l->pos.load();
		if (unclean)
			l->pos = 0;
	}
	m->readable = readable;
	m->writable = writable;
	std::lock_guard<std::mutex> g(m->lock);
	meta_write_bitmap_locked(m, 0, m->nr_chunks ? m->nr_chunks - 1 : 0);
	meta_write_sb_locked(m, false);
	return m->meta_error ? (t->error = "cannot write the mirror's superblock to its in-sync leg", -EIO) : 0;
}

/* [off, off + len) of a leg reads as zeroes: a hole in a file, the block layer's write-zeroes (unmapping
 * allowed) on a block device, else its zeroing that falls back to writes; written zeroes on a file system
 * without holes. (Not NOUNMAP: a loop device over a file system without it would drop its write-zeroes
 * for good, and a later server of the mirror could then not promise them.) */
static int zero_range(int fd, uint64_t off, uint64_t len)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, (off_t)off, (off_t)len) == 0)
		return 0;
	if (S_ISBLK(st.st_mode)) {
		uint64_t range[2] = {off, len};
		return ioctl(fd, BLKZEROOUT, range) < 0 ? -errno : 0;
	}
	if (errno != EOPNOTSUPP)
		return -errno;
	const size_t step = 1 << 20;
	aligned zeroes(step);
	if (!zeroes.p)
		return -ENOMEM;
	for (uint64_t done = 0; done < len; done += step) {
		int ret = leg_io(fd, zeroes.p, (size_t)std::min<uint64_t>(step, len - done), off + done, LEG_WRITE);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int mirror_grow(struct mirror *m, uint64_t size, std::string *why)
{
	std::unique_lock<std::mutex> g(m->lock);
	/* A queue's bitmap write in flight goes where the bitmap was: let it land first (a new one waits for
	 * the lock, and then sees the new place). */
	while (m->bm_writer >= 0) {
		g.unlock();
		usleep(1000);
		g.lock();
	}
	uint64_t old = m->data_size;
	if (size == old)
		return 0;
	if (size < old)
		return (*why = "a mirror does not shrink (it holds " + std::to_string(old) + " bytes)", -EINVAL);
	if (m->scrub.running.load())
		return (*why = "a check is running: resize once it ends (mirror status)", -EBUSY);
	unsigned n = m->n;
	for (unsigned i = 0; i < n; i++) {
		uint8_t s = m->legs[i].state.load();
		if (s != LEG_IN_SYNC && s != LEG_EMPTY)
			return (*why = "leg " + std::to_string(i + 1) + " is " + (s == LEG_FAILED ? "failed" : "resyncing") +
				       ": resize once every leg is in sync (replace or remove a failed one)", -EBUSY);
	}
	uint64_t chunks = (size + chunk_bytes(m) - 1) >> m->chunk_shift;
	if (chunks > m->chunks.cap)
		return (*why = "a running mirror grows to at most " + std::to_string(m->chunks.cap << m->chunk_shift) +
			       " bytes: recover it (a new server) to grow it further", -ENOSPC);
	uint64_t need = round_up(size, META_ALIGN) + bitmap_bytes(chunks) + SB_BYTES;
	uint64_t sizes[MAX_LEGS] = {};
	for (unsigned i = 0; i < n; i++) {
		struct leg *l = &m->legs[i];
		struct stat st;
		if (l->state.load() == LEG_EMPTY)
			continue;
		int ret = fstat(l->fd, &st) < 0 ? -errno : leg_size(l->fd, &sizes[i]);
		if (ret < 0)
			return (*why = "leg " + std::to_string(i + 1) + " cannot be sized: " + strerror(-ret), ret);
		if (sizes[i] < need && !S_ISREG(st.st_mode))
			return (*why = "leg " + std::to_string(i + 1) + " holds " + std::to_string(sizes[i]) + " bytes; " +
				       std::to_string(size) + " bytes of data and the metadata need " + std::to_string(need) +
				       ": grow it first", -ENOSPC);
	}
	/* The bytes added are the same on every leg (what was there, the old metadata among it, is not). */
	for (unsigned i = 0; i < n; i++) {
		struct leg *l = &m->legs[i];
		if (l->state.load() == LEG_EMPTY)
			continue;
		int ret = 0;
		if (sizes[i] < need) {
			ret = ftruncate(l->fd, (off_t)need) < 0 ? -errno : 0;
			sizes[i] = need;
		}
		if (ret == 0)
			ret = zero_range(l->fd, old, size - old);
		if (ret == 0 && fdatasync(l->fd) < 0)
			ret = -errno;
		if (ret < 0)
			return (*why = "leg " + std::to_string(i + 1) + " cannot be grown: " + strerror(-ret), ret);
	}
	int ret = m->chunks.grow(chunks);
	if (ret == 0)
		ret = m->idle.grow(chunks);
	if (ret < 0)
		return (*why = std::string("the bitmap cannot grow: ") + strerror(-ret), ret);
	for (unsigned i = 0; i < n; i++) {
		struct leg *l = &m->legs[i];
		if (l->state.load() == LEG_EMPTY)
			continue;
		l->size = sizes[i];
		layout(l, chunks);
	}
	m->nr_chunks = chunks;
	m->data_size = size;
	meta_write_bitmap_locked(m, 0, chunks - 1);
	meta_write_sb_locked(m, false);
	return m->meta_error ? (*why = "cannot write the mirror's superblock to its in-sync leg", -EIO) : 0;
}

int mirror_readd(struct mirror *m, unsigned i)
{
	struct leg *l = &m->legs[i];
	found f;
	if (!f.block.p)
		return -ENOMEM;
	std::lock_guard<std::mutex> g(m->lock);
	uint8_t s = l->state.load();
	if (s == LEG_IN_SYNC || s == LEG_RESYNC)
		return 0;
	/* Where its metadata goes now (the mirror may have grown while it was out). */
	int ret = leg_size(l->fd, &l->size);
	if (ret < 0)
		return ret;
	layout(l, m->nr_chunks);
	if (l->size < 4 * META_ALIGN || l->bitmap_off < m->data_size)
		return -ENOSPC;
	if ((ret = xfer(l->fd, f.block.p, SB_BYTES, l->sb_off, false)) < 0)
		return ret;
	/* Its own superblock says how much it missed: only the bitmap's chunks if no bit was cleared since
	 * it was last written, else every chunk. */
	const struct disk_sb *sb = f.sb();
	bool current = sb_valid(sb) && !memcmp(sb->uuid, m->uuid, sizeof(m->uuid)) && sb->leg == i &&
		       sb->events >= m->events_cleared && s == LEG_FAILED;
	l->full = !current;
	l->full_from = 0;
	l->pos = 0;
	l->state = LEG_RESYNC;
	l->known.store(false);
	m->writable.fetch_or(1u << i);
	meta_write_bitmap_locked(m, 0, m->nr_chunks ? m->nr_chunks - 1 : 0);
	meta_write_sb_locked(m, false);
	return (m->writable.load() & (1u << i)) ? 0 : -EIO;
}

int mirror_remove(struct mirror *m, unsigned i)
{
	std::lock_guard<std::mutex> g(m->lock);
	uint8_t s = m->legs[i].state.load();
	if (s == LEG_EMPTY)
		return 0;
	if (s != LEG_FAILED)
		return -EBUSY;
	m->legs[i].state = LEG_EMPTY;
	meta_write_sb_locked(m, false);
	return 0;
}

int mirror_add_leg(struct mirror *m, int fd, bool block_discard, int replaces, std::string *why)
{
	uint64_t size;
	int ret = leg_size(fd, &size);
	if (ret < 0)
		return (*why = std::string("the new leg cannot be sized: ") + strerror(-ret), ret);
	std::lock_guard<std::mutex> g(m->lock);
	unsigned j = m->n.load();
	if (j >= MAX_LEGS)
		return (*why = "a mirror has at most " + std::to_string(MAX_LEGS) + " slots", -ENOSPC);
	for (unsigned i = 0; i < j; i++)
		if (m->legs[i].replaces >= 0)
			return (*why = "leg " + std::to_string(i + 1) + " is still replacing leg " + std::to_string(m->legs[i].replaces + 1) + " (mirror status shows it)", -EBUSY);
	if (replaces >= (int)j)
		return (*why = "there is no leg " + std::to_string(replaces + 1) + " to replace", -EINVAL);
	struct leg *l = &m->legs[j];
	l->size = size;
	layout(l, m->nr_chunks);
	if (size < 4 * META_ALIGN || l->bitmap_off < m->data_size)
		return (*why = "the new leg is too small: this mirror needs " + std::to_string(m->data_size + (size - l->bitmap_off)) + " bytes", -ENOSPC);
	l->full = true;
	l->full_from = 0;
	l->pos = 0;
	l->replaces = replaces;
	l->known.store(false);
	l->state = LEG_RESYNC;
	l->fd = fd;
	if (block_discard)
		m->block_discard.fetch_or(1u << j);
	m->n = j + 1;
	/* The fd before files_gen, files_gen before the mask: a queue that sees the leg has its file. */
	m->files_gen.fetch_add(1, std::memory_order_release);
	m->writable.fetch_or(1u << j);
	meta_write_bitmap_locked(m, 0, m->nr_chunks ? m->nr_chunks - 1 : 0);
	meta_write_sb_locked(m, false);
	return (m->writable.load() & (1u << j)) ? (int)j : (*why = "the new leg cannot be written", -EIO);
}

void mirror_swap_in_locked(struct mirror *m, unsigned from)
{
	struct leg *nw = &m->legs[from];
	unsigned to = (unsigned)nw->replaces;
	struct leg *old = &m->legs[to];
	/* The old leg's slot takes the new leg: same fd in every ring once each queue refreshes; until then
	 * writes still reach the new leg through its own slot, which leaves last. */
	old->size = nw->size;
	old->sb_off = nw->sb_off;
	old->bitmap_off = nw->bitmap_off;
	old->full = false;
	old->pos = 0;
	old->known.store(false);
	old->state = LEG_IN_SYNC;
	old->fd = nw->fd.load();
	uint32_t bd = m->block_discard.load();
	m->block_discard = (bd & ~(1u << to)) | ((bd >> from) & 1u) << to;
	m->files_gen.fetch_add(1, std::memory_order_release);
	m->readable.fetch_or(1u << to);
	m->writable.fetch_or(1u << to);
	m->readable.fetch_and(~(1u << from));
	m->writable.fetch_and(~(1u << from));
	nw->state = LEG_EMPTY;
	nw->replaces = -1;
	nw->fd = -1;
	m->files_gen.fetch_add(1, std::memory_order_release);
	if (from + 1 == m->n.load())
		m->n = from;
	meta_write_sb_locked(m, false);
}
