/*
 * mirror: how a mirror is put together from its legs when its server starts (a new array over legs that
 * hold none, or the legs' own, the freshest superblock saying what each leg is), md's way.
 */
#include <sys/random.h>

#include "meta.h"

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
	std::lock_guard<std::mutex> g(m->lock);
	for (unsigned i = 0; i < m->n; i++) {
		if (!legs[i].valid || legs[i].sb()->events != fresh->events)
			continue;
		if (xfer(m->legs[i].fd, buf.p, len, m->legs[i].bitmap_off, false) < 0)
			continue;
		auto *bits = static_cast<const uint8_t *>(buf.p);
		for (uint64_t c = 0; c < m->nr_chunks; c++)
			if (bits[c / 8] & (1u << (c % 8)))
				mirror_set_bit_locked(m, c);
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
	if ((ret = m->chunks.reserve(cap, m->nr_chunks)) < 0 || (ret = m->idle.reserve(cap, m->nr_chunks)) < 0 ||
	    (ret = m->bm_words.reserve(bitmap_words(cap), bitmap_words(m->nr_chunks))) < 0 ||
	    (ret = m->wanted.reserve(bitmap_words(cap), bitmap_words(m->nr_chunks))) < 0)
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
