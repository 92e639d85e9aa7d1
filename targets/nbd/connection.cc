/*
 * The nbd target's connections: how requests are sent (a kernel probe), one connection per queue at init
 * (a blocking handshake each, on libuv's pool), the reconnect worker (blocking connects with backoff, never
 * on a queue thread) and, on a queue's thread, losing a connection and swapping the reconnected socket into
 * the queue's fixed-file slot once nothing of the old one is in flight.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "state.h"

/* A reconnected export must still be the one the device describes. It may have grown (a server restarted
 * with a larger export, for `resize`): the device serves its own size until it is resized. */
static bool same_export(const struct export_info &was, const struct export_info &now)
{
	const uint16_t used = NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
			      NBD_FLAG_CAN_MULTI_CONN;
	return now.size >= was.size && (now.flags & was.flags & used) == (was.flags & used) &&
	       (now.flags & NBD_FLAG_READ_ONLY) <= (was.flags & NBD_FLAG_READ_ONLY) && now.max_payload >= was.max_payload &&
	       now.min_block <= was.min_block;
}

/* Does this kernel take a plain send from a registered buffer (IORING_RECVSEND_FIXED_BUF on IORING_OP_SEND,
 * 7.2+)? Older kernels refuse the flag with EINVAL. Tried on a socketpair with a buffer of our own. */
static bool probe_fixed_send()
{
	struct io_uring ring;
	if (io_uring_queue_init(2, &ring, 0) < 0)
		return false;
	static char byte[64];
	struct iovec iov = {byte, sizeof(byte)};
	int sv[2];
	bool ok = false;
	if (io_uring_register_buffers(&ring, &iov, 1) == 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		io_uring_prep_send(sqe, sv[0], byte, 1, MSG_NOSIGNAL);
		sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
		sqe->buf_index = 0;
		struct io_uring_cqe *cqe;
		if (io_uring_submit_and_wait(&ring, 1) == 1 && io_uring_peek_cqe(&ring, &cqe) == 0) {
			ok = cqe->res == 1;
			io_uring_cqe_seen(&ring, cqe);
		}
		close(sv[0]);
		close(sv[1]);
	}
	io_uring_queue_exit(&ring);
	return ok;
}

int nbd_choose_send(struct nbd *n, const std::string &want, std::string *why)
{
	bool fixed = probe_fixed_send();
	if (want == "fixed") {
		if (!fixed) {
			*why = "--send fixed: this kernel has no plain send from a registered buffer (7.2+); use --send zc or copy";
			return -EOPNOTSUPP;
		}
		n->send = SEND_FIXED;
	} else if (want == "zc") {
		if (!n->srv.tcp) {
			*why = "--send zc needs --host: the kernel has no zero-copy send on unix sockets";
			return -EOPNOTSUPP;
		}
		n->send = SEND_ZC;
	} else if (want == "copy") {
		n->send = SEND_COPY;
	} else {
		/* Best first: a fixed send holds the lease only until the send returns; SEND_ZC until the
		 * network lets the pages go; copy moves the bytes once more. */
		n->send = fixed ? SEND_FIXED : n->srv.tcp ? SEND_ZC : SEND_COPY;
	}
	return 0;
}

void nbd_set_error(struct nbd *n, const std::string &why)
{
	std::lock_guard<std::mutex> g(n->mu);
	n->last_error = why;
}

/* ---- the reconnect worker: blocking connects, never on a queue thread ---- */

static void worker_main(struct nbd *n)
{
	std::unique_lock<std::mutex> lk(n->mu);
	while (!n->stop) {
		if (n->jobs.empty()) {
			n->cv.wait(lk);
			continue;
		}
		unsigned i = n->jobs.front();
		n->jobs.pop_front();
		lk.unlock();
		int fd = -1;
		uint64_t size = 0;
		std::string why;
		for (unsigned a = 0; a < n->reconnect && fd < 0; a++) {
			/* Backoff 0.1, 0.2, 0.4 ... 5 s; the cancel fd ends it at deinit. */
			struct pollfd p = {n->cancel_fd, POLLIN, 0};
			if (poll(&p, 1, (int)std::min<int64_t>(100ll << std::min(a, 6u), 5000)) > 0)
				break;
			struct export_info ei;
			fd = nbd_handshake(n->srv, n->cancel_fd, &ei, &why);
			if (fd == -ECANCELED)
				break;
			if (fd >= 0 && !same_export(n->ei, ei)) {
				close(fd);
				fd = -1;
				why = n->srv.endpoint + ": the export changed across the reconnect (smaller, or other flags)";
				break;
			}
			size = ei.size;
			if (fd < 0)
				fprintf(stderr, "nbd: connection %u: reconnect attempt %u of %u failed: %s\n", i, a + 1,
					n->reconnect, why.c_str());
		}
		lk.lock();
		struct conn *c = n->conns[i].get();
		c->new_fd = fd >= 0 ? fd : -1;
		c->failed = fd < 0;
		if (size > n->ei.size)
			n->ei.size = size; /* status (under mu) shows it: `resize` may grow the device up to it */
		if (fd < 0)
			n->last_error = "reconnect failed: " + why;
		else
			fprintf(stderr, "nbd: connection %u: reconnected to %s\n", i, n->srv.endpoint.c_str());
		uint64_t one = 1;
		(void)!write(c->evfd, &one, sizeof(one));
	}
}

/* ---- init (libuv's pool) and deinit (the JavaScript thread) ---- */

/* An eventfd into *fd; -errno with *why. */
static int open_eventfd(int *fd, std::string *why)
{
	*fd = eventfd(0, EFD_CLOEXEC);
	if (*fd >= 0)
		return 0;
	int e = errno;
	*why = std::string("eventfd: ") + strerror(e);
	return -e;
}

int nbd_connect(struct nbd *n, int64_t queues, std::string *why)
{
	/* The first connection says whether more are allowed. */
	int fd = nbd_handshake(n->srv, -1, &n->ei, why);
	if (fd < 0)
		return fd;
	n->conns.push_back(std::make_unique<conn>());
	n->conns[0]->fd = fd;
	bool multi = n->ei.flags & NBD_FLAG_CAN_MULTI_CONN;
	if (queues > 1 && !multi) {
		*why = n->srv.endpoint + ": the export does not allow more than one connection "
					 "(no NBD_FLAG_CAN_MULTI_CONN): use --queues 1";
		return -EINVAL;
	}
	for (int64_t q = 1; q < queues; q++) {
		struct export_info ei;
		fd = nbd_handshake(n->srv, -1, &ei, why);
		if (fd < 0)
			return fd;
		n->conns.push_back(std::make_unique<conn>());
		n->conns.back()->fd = fd;
		if (!same_export(n->ei, ei)) {
			*why = n->srv.endpoint + ": connection " + std::to_string(q) + " saw a different export (size or flags)";
			return -EPROTO;
		}
	}
	if (n->reconnect > 0) {
		int r = open_eventfd(&n->cancel_fd, why);
		for (auto &c : n->conns)
			if (r == 0)
				r = open_eventfd(&c->evfd, why);
		if (r < 0)
			return r;
		n->worker = std::thread(worker_main, n);
	}
	return 0;
}

void nbd_free(struct nbd *n)
{
	if (n->worker.joinable()) {
		{
			std::lock_guard<std::mutex> g(n->mu);
			n->stop = true;
		}
		uint64_t one = 1;
		(void)!write(n->cancel_fd, &one, sizeof(one));
		n->cv.notify_all();
		n->worker.join();
	}
	for (auto &c : n->conns) {
		if (c->fd >= 0)
			close(c->fd);
		if (c->new_fd >= 0)
			close(c->new_fd);
		if (c->evfd >= 0)
			close(c->evfd);
	}
	if (n->cancel_fd >= 0)
		close(n->cancel_fd);
	delete n;
}

/* ---- a lost connection and its replacement (the queue's thread) ---- */

static void arm_event(struct tq *tq, struct nbd_q *nq)
{
	if (nq->ev_armed || nq->stopping)
		return;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_EVENT);
	io_uring_prep_read(sqe, nq->c->evfd, &nq->ev_val, sizeof(nq->ev_val), 0);
	nq->ev_armed = true;
}

/* The connection cannot be trusted any more (a protocol violation, an I/O error, EOF, a timeout). */
void nbd_conn_lost(struct tq *tq, struct nbd_q *nq, const std::string &why)
{
	struct conn *c = nq->c;
	if (c->state.load() != CONN_UP)
		return;
	struct nbd *n = nq->n;
	nbd_set_error(n, "queue " + std::to_string(tq->q_id) + ": " + why);
	shutdown(c->fd, SHUT_RDWR);
	if (nq->last_ack > n->flushed.load() && (n->ei.flags & NBD_FLAG_SEND_FLUSH)) {
		n->losses++; /* the next FLUSH fails: see durable() */
		nq->last_ack = 0;
	}
	nq->reply_got = 0;
	nq->ring_tail = nq->open_at; /* a run not sent yet: its requests are resent or failed below */
	if (n->reconnect > 0 && !nq->stopping) {
		c->state = CONN_RECONNECTING;
		nbd_hold_all(tq, nq);
		{
			std::lock_guard<std::mutex> g(n->mu);
			n->jobs.push_back(tq->q_id); /* queue q owns connection q */
		}
		n->cv.notify_one();
		arm_event(tq, nq);
		return;
	}
	c->state = CONN_DEAD;
	nbd_fail_all(tq, nq, -EIO);
}

/* Swap the reconnected socket into our fixed-file slot, once nothing of the old socket is in flight (a
 * queued member would otherwise go out on the new one). */
void nbd_try_install(struct tq *tq, struct nbd_q *nq)
{
	if (nq->c->state.load() != CONN_RECONNECTING || nq->pending_fd < 0 || nq->wire || nq->recv_armed ||
	    nq->fupd_busy || nq->stopping)
		return;
	nq->fupd_fd = nq->pending_fd;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_FUPD);
	io_uring_prep_files_update(sqe, &nq->fupd_fd, 1, nq->file);
	nq->fupd_busy = true;
}

void nbd_on_installed(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->fupd_busy = false;
	int fd = nq->pending_fd;
	nq->pending_fd = -1;
	if (res < 1) {
		close(fd);
		nbd_set_error(nq->n, std::string("replacing the socket in the ring: ") + strerror(res < 0 ? -res : EIO));
		nq->c->state = CONN_DEAD;
		nbd_fail_all(tq, nq, -EIO);
		return;
	}
	/* Other rings may still hold the old socket as a fixed file: it is shut down, so it stays quiet. */
	close(nq->c->fd);
	nq->c->fd = fd;
	nq->c->reconnects++;
	nq->c->state = CONN_UP;
	if (nq->stopping) {
		shutdown(fd, SHUT_RDWR);
		return;
	}
	nbd_resend(tq, nq);
}

void nbd_on_event(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->ev_armed = false;
	if (res == -ECANCELED) {
		nbd_enter_stopping(nq);
		return;
	}
	int fd;
	bool failed;
	{
		std::lock_guard<std::mutex> g(nq->n->mu);
		fd = nq->c->new_fd;
		failed = nq->c->failed;
		nq->c->new_fd = -1;
		nq->c->failed = false;
	}
	if (fd >= 0) {
		nq->pending_fd = fd;
		nbd_try_install(tq, nq);
	} else if (failed) {
		nq->c->state = CONN_DEAD;
		nbd_fail_all(tq, nq, -EIO);
	} else {
		arm_event(tq, nq); /* a wake-up with nothing for us */
	}
}
