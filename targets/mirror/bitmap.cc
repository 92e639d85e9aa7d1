/*
 * The queue side of the write-intent bitmap: a write to a chunk whose bit is not on the legs yet is held
 * (mirror.cc) until it is. After a batch, the queue writes the blocks its held writes wait for to every
 * writable leg through its own ring, the legs in parallel, while writes to marked chunks go on (md's
 * unplug does the same, on a thread of its own).
 *
 * One such write is in flight per mirror: two snapshots of a block in flight at once could land in
 * either order, and the older would unset a bit the newer made durable. A queue that finds another's in
 * flight waits for its end (a read of an eventfd on its own ring, written by the queue that finishes),
 * then finds its bits written or writes them itself. The verbs' and the sweep's writes of the bitmap
 * are synchronous under the mirror's lock, taken only when none of these is in flight (the verbs wait in
 * meta_lock_bitmap, the sweep skips its turn), and carry every bit a write waits for.
 *
 * A block is made from the bitmap's words (bm_words, and the wanted bits it takes): 512 words, whatever
 * the chunks in it.
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mirror.h"

enum : uint64_t {
	COOKIE_WAKE = 0x100,
	COOKIE_BITMAP = 0x200, /* | the leg */
};

int mirror_bitmap_init(struct mirror *m, unsigned nr_queues)
{
	m->bm_waiting.assign(nr_queues, 0);
	for (unsigned q = 0; q < nr_queues; q++) {
		int fd = eventfd(0, EFD_CLOEXEC);
		if (fd < 0)
			return -errno;
		m->wake_fds.push_back(fd);
	}
	return 0;
}

void mirror_bitmap_deinit(struct mirror *m)
{
	for (int fd : m->wake_fds)
		close(fd);
	m->wake_fds.clear();
}

static void arm_wake(struct tq *tq, struct mirror *m, struct bitmap_q *bq)
{
	if (bq->armed)
		return;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, COOKIE_WAKE);
	io_uring_prep_read(sqe, m->wake_fds[tq->q_id], &bq->wake_val, sizeof(bq->wake_val), 0);
	bq->armed = true;
}

void bitmap_write(struct tq *tq, struct mirror *m, struct bitmap_q *bq, const uint64_t *blocks, unsigned n)
{
	if (bq->left)
		return; /* its completion looks again */
	if (!bq->buf && posix_memalign(reinterpret_cast<void **>(&bq->buf), 4096, MAX_BM_BLOCKS * 4096)) {
		bq->buf = nullptr;
		queue_fail(tq, "no memory for the mirror's bitmap writes");
		return;
	}
	n = n < MAX_BM_BLOCKS ? n : MAX_BM_BLOCKS;
	{
		std::lock_guard<std::mutex> g(m->lock);
		if (m->bm_writer >= 0) {
			m->bm_waiting[tq->q_id] = 1;
			arm_wake(tq, m, bq);
			return;
		}
		m->bm_writer = tq->q_id;
		for (unsigned k = 0; k < n; k++) {
			bq->blocks[k] = blocks[k];
			meta_bitmap_block_locked(m, blocks[k], bq->buf + k * 4096, bq->taken[k]);
		}
		bq->nr_blocks = n;
		bq->mask = m->writable.load();
	}
	mirror_refresh_files(tq, m);
	bq->failed = 0;
	bq->cancelled = false;
	for (uint32_t left = bq->mask; left; left &= left - 1) {
		unsigned i = (unsigned)__builtin_ctz(left);
		for (unsigned k = 0; k < n; k++) {
			struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, COOKIE_BITMAP | i);
			io_uring_prep_write(sqe, (int)i + 1, bq->buf + k * 4096, 4096, m->legs[i].bitmap_off + bq->blocks[k] * 4096);
			sqe->flags |= IOSQE_FIXED_FILE;
			sqe->rw_flags = RWF_DSYNC;
			bq->left++;
		}
	}
	if (!bq->left) { /* no writable leg: the held writes fail on meta_error */
		std::lock_guard<std::mutex> g(m->lock);
		m->meta_error = true;
		m->bm_writer = -1;
		m->bm_idle.notify_all();
	}
}

/* Every leg answered: what reached them is durable, the writer's turn ends, and waiting queues wake. */
static void bitmap_written(struct mirror *m, struct bitmap_q *bq)
{
	std::vector<int> wake;
	{
		std::lock_guard<std::mutex> g(m->lock);
		bool dropped = false;
		for (uint32_t left = bq->failed; left; left &= left - 1) {
			unsigned i = (unsigned)__builtin_ctz(left);
			dropped |= meta_drop_on_error_locked(m, i, m->legs[i].bitmap_off, bq->err[i]);
		}
		if (dropped)
			meta_write_sb_locked(m, false);
		/* A leg that became writable meanwhile (a replace's new leg taking its slot) did not get it:
		 * written again next time. */
		bool landed = !bq->cancelled && !m->meta_error && !(m->writable.load() & ~bq->mask);
		for (unsigned k = 0; k < bq->nr_blocks; k++)
			if (landed)
				meta_bitmap_written_locked(m, bq->blocks[k], bq->taken[k]);
			else
				meta_bitmap_untaken(m, bq->blocks[k], bq->taken[k]);
		m->bm_writer = -1;
		m->bm_idle.notify_all();
		for (size_t q = 0; q < m->bm_waiting.size(); q++)
			if (m->bm_waiting[q]) {
				m->bm_waiting[q] = 0;
				wake.push_back(m->wake_fds[q]);
			}
	}
	uint64_t one = 1;
	for (int fd : wake)
		(void)!write(fd, &one, sizeof(one));
}

void bitmap_on_cqe(struct tq *, struct mirror *m, struct bitmap_q *bq, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	if (cookie == COOKIE_WAKE) {
		bq->armed = false; /* queue_idle, which runs next, looks at the held writes again */
		return;
	}
	unsigned i = (unsigned)(cookie & 0xff);
	if (cqe->res == -ECANCELED) {
		bq->cancelled = true;
	} else if (cqe->res != 4096) {
		bq->failed |= 1u << i;
		bq->err[i] = cqe->res < 0 ? cqe->res : -EIO;
	}
	if (--bq->left == 0)
		bitmap_written(m, bq);
}
