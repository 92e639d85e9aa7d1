/*
 * mirror: the format of what lives on the legs, shared by the files that read and write it (meta.cc: the
 * superblocks and bitmap blocks; assemble.cc: a mirror put together from its legs; reshape.cc: legs
 * added, replaced, removed, and the mirror grown).
 *
 * The last 4 KiB of each leg (rounded down to 4 KiB) is its superblock; just before it, the write-intent
 * bitmap (one bit per chunk, in 4 KiB blocks); the data area is [0, data_size), the same on every leg,
 * so a leg's first data_size bytes are the device's bytes (cmp, dd and mount see them as they are).
 */
#pragma once
#include <errno.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

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

static inline uint32_t fnv1a(const void *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ static_cast<const uint8_t *>(p)[i]) * 16777619u;
	return h;
}

static inline uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static inline uint64_t bitmap_bytes(uint64_t nr_chunks)
{
	return round_up((nr_chunks + 7) / 8, META_ALIGN);
}

/* Where a leg of `size` bytes keeps its superblock and a bitmap of nr_chunks bits. */
static inline void layout(struct leg *l, uint64_t nr_chunks)
{
	l->sb_off = l->size / META_ALIGN * META_ALIGN - SB_BYTES;
	l->bitmap_off = l->sb_off - bitmap_bytes(nr_chunks);
}

static inline int leg_size(int fd, uint64_t *size, bool *regular = nullptr)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (regular)
		*regular = S_ISREG(st.st_mode);
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

/* Metadata is durable before anything relies on it. */
static inline int xfer(int fd, void *buf, size_t len, uint64_t off, bool write)
{
	return leg_io(fd, buf, len, off, write ? LEG_WRITE_DSYNC : LEG_READ);
}


static inline bool sb_valid(const struct disk_sb *sb)
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

struct found {
	bool readable = false; /* its superblock block could be read */
	bool valid = false;
	aligned block{SB_BYTES};
	const struct disk_sb *sb() const { return static_cast<const struct disk_sb *>(block.p); }
};
