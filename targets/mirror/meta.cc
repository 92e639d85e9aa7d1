/*
 * mirror: the superblocks and bitmap blocks on the legs (their format: meta.h), and a leg dropped when
 * writing them fails.
 *
 * Freshness is md's: every change of the array's state bumps an event counter written to every leg that
 * still takes writes, so a leg that missed writes carries an older count. The freshest superblock says
 * what each leg is (assemble.cc); an older leg is resynced: only the bitmap's chunks if no bit was cleared
 * since it was last written (its count is at least events_cleared), else every chunk.
 */
#include <endian.h>
#include <sys/uio.h>

#include "meta.h"

int leg_io(int fd, void *buf, size_t len, uint64_t off, int how)
{
	struct iovec iov = {buf, len};
	ssize_t r = how == LEG_READ ? preadv2(fd, &iov, 1, (off_t)off, 0)
				    : pwritev2(fd, &iov, 1, (off_t)off, how == LEG_WRITE_DSYNC ? RWF_DSYNC : 0);
	if (r < 0)
		return -errno;
	return (size_t)r == len ? 0 : -EIO;
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

bool meta_bitmap_block_locked(struct mirror *m, uint64_t b, uint8_t *buf, uint64_t *taken)
{
	uint64_t w0 = b * BITMAP_BLOCK_WORDS, end = std::min(m->bm_words.len, w0 + BITMAP_BLOCK_WORDS);
	memset(buf, 0, META_ALIGN);
	memset(taken, 0, BITMAP_BLOCK_WORDS * sizeof(*taken));
	bool any = false;
	for (uint64_t w = w0; w < end; w++) {
		/* The exchange only where a bit waits: most words have none. */
		uint64_t t = m->wanted[w].load(std::memory_order_relaxed) ? m->wanted[w].exchange(0) : 0;
		taken[w - w0] = t;
		any |= t != 0;
		m->bm_words[w] |= t;
		uint64_t le = htole64(m->bm_words[w]);
		memcpy(buf + (w - w0) * 8, &le, 8);
	}
	return any;
}

void meta_bitmap_written_locked(struct mirror *m, uint64_t b, const uint64_t *taken)
{
	for (unsigned k = 0; k < BITMAP_BLOCK_WORDS; k++)
		for (uint64_t t = taken[k]; t; t &= t - 1) {
			uint64_t c = (b * BITMAP_BLOCK_WORDS + k) * 64 + (uint64_t)__builtin_ctzll(t);
			mirror_set_bit_locked(m, c); /* it is in bm_words since the block took it */
			m->chunks[c].fetch_and(~CHUNK_WANT);
		}
}

void meta_bitmap_untaken(struct mirror *m, uint64_t b, const uint64_t *taken)
{
	for (unsigned k = 0; k < BITMAP_BLOCK_WORDS; k++)
		if (taken[k])
			m->wanted[b * BITMAP_BLOCK_WORDS + k].fetch_or(taken[k]);
}

std::unique_lock<std::mutex> meta_lock_bitmap(struct mirror *m)
{
	std::unique_lock<std::mutex> lk(m->lock);
	m->bm_idle.wait(lk, [m] { return m->bm_writer < 0; });
	return lk;
}

void meta_write_bitmap_locked(struct mirror *m, uint64_t c0, uint64_t c1)
{
	auto *buf = static_cast<uint8_t *>(m->meta_buf);
	uint64_t taken[BITMAP_BLOCK_WORDS];
	for (uint64_t b = c0 / BITMAP_BLOCK_CHUNKS; b <= c1 / BITMAP_BLOCK_CHUNKS; b++) {
		bool wanted = meta_bitmap_block_locked(m, b, buf, taken);
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
			meta_bitmap_written_locked(m, b, taken);
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
