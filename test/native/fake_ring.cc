/* The fake kernel: see fake_ring.h. */
#include "fake_ring.h"

#include <errno.h>

#include "check.h"

fake_kernel *g_kernel;

void fake_kernel::post(uint64_t user_data, int32_t res, uint32_t flags)
{
	if (cq_tail - cq_head >= cq.size()) {
		overflows++;
		test_fail(__FILE__, __LINE__, "CQ overflow");
		return;
	}
	struct io_uring_cqe &c = cq[cq_tail & (cq.size() - 1)];
	c.user_data = user_data;
	c.res = res;
	c.flags = flags;
	__atomic_store_n(&cq_tail, cq_tail + 1, __ATOMIC_RELEASE);
}

void fake_kernel::run()
{
	std::unique_lock<std::mutex> g(mu);
	if (queue_ended)
		return;
	queue_turn = true;
	cv.notify_all();
	cv.wait(g, [this] { return !queue_turn || queue_ended; });
}

void fake_kernel::wait_for_test()
{
	std::unique_lock<std::mutex> g(mu);
	queue_turn = false;
	cv.notify_all();
	cv.wait(g, [this] { return queue_turn; });
}

static fake_kernel *K(struct io_uring *ring)
{
	(void)ring;
	return g_kernel;
}

/* Take the SQEs io_uring_get_sqe handed out, in order. */
static unsigned consume(struct io_uring *ring)
{
	fake_kernel *k = K(ring);
	struct io_uring_sq *sq = &ring->sq;
	unsigned n = 0;
	for (; sq->sqe_head != sq->sqe_tail; sq->sqe_head++, n++) {
		const struct io_uring_sqe &s = sq->sqes[sq->sqe_head & sq->ring_mask];
		k->pending.push_back(s);
		k->log.push_back(s);
		if (k->on_submit)
			k->on_submit(k, s);
	}
	__atomic_store_n(sq->khead, sq->sqe_head, __ATOMIC_RELEASE);
	*sq->ktail = sq->sqe_tail;
	return n;
}

extern "C" {

int io_uring_queue_init_params(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	fake_kernel *k = K(ring);
	if (!k || k->ring_open)
		return -ENOSYS; /* one queue ring per test */
	unsigned cqn = (p->flags & IORING_SETUP_CQSIZE) ? p->cq_entries : 2 * entries;
	k->params = *p;
	k->sq_entries = entries;
	k->sq.assign(entries, io_uring_sqe{});
	k->sq_array.assign(entries, 0);
	k->cq.assign(cqn, io_uring_cqe{});
	k->sq_head = k->sq_tail = k->cq_head = k->cq_tail = 0;
	memset(ring, 0, sizeof(*ring));
	ring->flags = p->flags;
	ring->sq.khead = &k->sq_head;
	ring->sq.ktail = &k->sq_tail;
	ring->sq.kflags = &k->sq_flags;
	ring->sq.kdropped = &k->sq_dropped;
	ring->sq.array = k->sq_array.data();
	ring->sq.sqes = k->sq.data();
	ring->sq.ring_mask = entries - 1;
	ring->sq.ring_entries = entries;
	ring->cq.khead = &k->cq_head;
	ring->cq.ktail = &k->cq_tail;
	ring->cq.kflags = &k->cq_flags;
	ring->cq.koverflow = &k->cq_overflow;
	ring->cq.cqes = k->cq.data();
	ring->cq.ring_mask = cqn - 1;
	ring->cq.ring_entries = cqn;
	ring->ring_fd = -1;
	k->ring_open = true;
	return 0;
}

/* Only the queue's ring is faked: nbd's probe of fixed sends finds none. */
int io_uring_queue_init(unsigned, struct io_uring *, unsigned)
{
	return -ENOSYS;
}

void io_uring_queue_exit(struct io_uring *ring)
{
	K(ring)->ring_open = false;
}

int io_uring_register_files(struct io_uring *ring, const int *files, unsigned nr)
{
	K(ring)->nr_files = nr;
	K(ring)->files.assign(files, files + nr);
	return 0;
}

int io_uring_register_files_update(struct io_uring *ring, unsigned off, const int *files, unsigned nr)
{
	fake_kernel *k = K(ring);
	if (off + nr > k->files.size())
		return -EINVAL;
	std::copy(files, files + nr, k->files.begin() + off);
	return (int)nr;
}

int io_uring_register_buffers_sparse(struct io_uring *ring, unsigned nr)
{
	K(ring)->nr_sparse_bufs = nr;
	return 0;
}

int io_uring_register_buffers(struct io_uring *, const struct iovec *, unsigned)
{
	return -ENOSYS;
}

int io_uring_submit(struct io_uring *ring)
{
	return consume(ring);
}

int io_uring_get_events(struct io_uring *ring)
{
	consume(ring);
	return 0;
}

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr)
{
	fake_kernel *k = K(ring);
	int n = consume(ring);
	if (wait_nr && k->cq_ready() == 0)
		k->wait_for_test();
	return n;
}

int io_uring_wait_cqe_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr, struct __kernel_timespec *)
{
	fake_kernel *k = K(ring);
	consume(ring);
	if (k->cq_ready() == 0)
		k->wait_for_test();
	if (k->cq_ready() == 0)
		return -ETIME; /* the test let the timeout pass */
	*cqe_ptr = &k->cq[k->cq_head & (k->cq.size() - 1)];
	return 0;
}

int __io_uring_get_cqe(struct io_uring *, struct io_uring_cqe **, unsigned, unsigned, sigset_t *)
{
	return -ENOSYS;
}
}
