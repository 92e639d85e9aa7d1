/*
 * mirror: the array changed while it runs: a leg re-added, removed, added or replacing another, and the
 * mirror grown (`resize`). Each change is on the legs' superblocks before it is answered.
 */
#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include "meta.h"

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

static int zero_between(int fd, uint64_t from, uint64_t to)
{
	return to > from ? zero_range(fd, from, to - from) : 0;
}

/* Why the mirror cannot grow to size now ("" if it can), under lock. */
static std::string grow_refusal(struct mirror *m, uint64_t size)
{
	uint64_t old = m->data_size;
	if (size < old)
		return "a mirror does not shrink (it holds " + std::to_string(old) + " bytes)";
	if (m->scrub.running.load())
		return "a check is running: resize once it ends (mirror status)";
	for (unsigned i = 0; i < m->n; i++) {
		uint8_t s = m->legs[i].state.load();
		if (s != LEG_IN_SYNC && s != LEG_EMPTY)
			return "leg " + std::to_string(i + 1) + " is " + (s == LEG_FAILED ? "failed" : "resyncing") +
			       ": resize once every leg is in sync (replace or remove a failed one)";
	}
	uint64_t chunks = (size + chunk_bytes(m) - 1) >> m->chunk_shift;
	if (chunks > m->chunks.cap)
		return "a running mirror grows to at most " + std::to_string(m->chunks.cap << m->chunk_shift) +
		       " bytes: recover it (a new server) to grow it further";
	return "";
}

/* A leg as the grow found it: its size now, and where its metadata was (the only bytes of [old, size)
 * that queues may write while the rest is zeroed without the lock). */
struct grow_leg {
	bool file;
	uint64_t size, meta_from, meta_end;
	int fd = -1; /* a dup: a replace may close the leg's own while the lock is not held */
	~grow_leg()
	{
		if (fd >= 0)
			close(fd);
	}
};

int mirror_grow(struct mirror *m, uint64_t size, std::string *why)
{
	uint64_t old, need;
	struct grow_leg g[MAX_LEGS] = {};
	{
		std::lock_guard<std::mutex> lk(m->lock);
		old = m->data_size;
		if (size == old)
			return 0;
		if (!(*why = grow_refusal(m, size)).empty())
			return -EINVAL;
		need = round_up(size, META_ALIGN) + bitmap_bytes((size + chunk_bytes(m) - 1) >> m->chunk_shift) + SB_BYTES;
		for (unsigned i = 0; i < m->n; i++) {
			struct leg *l = &m->legs[i];
			if (l->state.load() == LEG_EMPTY)
				continue;
			int ret = leg_size(l->fd, &g[i].size, &g[i].file);
			if (ret < 0)
				return (*why = "leg " + std::to_string(i + 1) + " cannot be sized: " + strerror(-ret), ret);
			if (g[i].size < need && !g[i].file)
				return (*why = "leg " + std::to_string(i + 1) + " holds " + std::to_string(g[i].size) + " bytes; " +
					       std::to_string(size) + " bytes of data and the metadata need " + std::to_string(need) +
					       ": grow it first", -ENOSPC);
			g[i].meta_from = l->bitmap_off;
			g[i].meta_end = l->sb_off + SB_BYTES;
			if ((g[i].fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 0)) < 0) {
				int err = errno;
				return (*why = std::string("cannot grow: ") + strerror(err), -err);
			}
		}
	}
	/* The bytes added are the same on every leg (what was there, the old metadata among it, is not). A
	 * large zeroing (a block device's) runs here, without the lock, so a queue that fails a leg meanwhile
	 * does not wait for it; a file that grows below gets a hole there anyway. */
	for (unsigned i = 0; i < m->n; i++) {
		if (!g[i].size || g[i].size < need)
			continue;
		int ret = zero_between(g[i].fd, old, std::min(size, g[i].meta_from));
		if (ret == 0)
			ret = zero_between(g[i].fd, std::max(old, g[i].meta_end), size);
		if (ret < 0)
			return (*why = "leg " + std::to_string(i + 1) + " cannot be grown: " + strerror(-ret), ret);
	}
	/* A queue's bitmap write in flight goes where the bitmap was: it lands first (a new one waits for the
	 * lock, and then sees the new place). */
	std::unique_lock<std::mutex> lk = meta_lock_bitmap(m);
	bool same = m->data_size == old && grow_refusal(m, size).empty();
	for (unsigned i = 0; i < m->n && same; i++)
		same = m->legs[i].state.load() == LEG_EMPTY ? !g[i].size : m->legs[i].bitmap_off == g[i].meta_from;
	if (!same)
		return (*why = "the mirror changed while it grew (a leg failed, or another resize): resize again", -EAGAIN);
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		if (!g[i].size)
			continue;
		int ret = 0;
		if (g[i].size < need) {
			ret = ftruncate(l->fd, (off_t)need) < 0 ? -errno : zero_range(l->fd, old, size - old);
			g[i].size = need;
		} else {
			ret = zero_between(l->fd, std::max(old, g[i].meta_from), std::min(size, g[i].meta_end));
		}
		if (ret == 0 && fdatasync(l->fd) < 0)
			ret = -errno;
		if (ret < 0)
			return (*why = "leg " + std::to_string(i + 1) + " cannot be grown: " + strerror(-ret), ret);
	}
	uint64_t chunks = (size + chunk_bytes(m) - 1) >> m->chunk_shift;
	int ret = m->chunks.grow(chunks);
	if (ret == 0)
		ret = m->idle.grow(chunks);
	if (ret == 0)
		ret = m->bm_words.grow(bitmap_words(chunks));
	if (ret == 0)
		ret = m->wanted.grow(bitmap_words(chunks));
	if (ret < 0)
		return (*why = std::string("the bitmap cannot grow: ") + strerror(-ret), ret);
	for (unsigned i = 0; i < m->n; i++) {
		struct leg *l = &m->legs[i];
		if (!g[i].size)
			continue;
		l->size = g[i].size;
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
	std::unique_lock<std::mutex> lk = meta_lock_bitmap(m); /* it writes the bitmap */
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
	std::unique_lock<std::mutex> lk = meta_lock_bitmap(m); /* it writes the bitmap */
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
