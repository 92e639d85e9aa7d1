/*
 * nbd: a ublk device in front of an NBD server (nbdkit, qemu-nbd, nbd-server), speaking the transmission
 * phase of the protocol (doc/proto.md of NetworkBlockDevice/nbd) on the queue rings.
 *
 *   init       on libuv's pool: for each connection a blocking handshake bounded by --timeout (handshake.cc).
 *              The sockets become fixed files 1..n: one per queue when the server sets
 *              NBD_FLAG_CAN_MULTI_CONN, else one and a single queue.
 *   request    the 28-byte request header from per-tag target memory, then a WRITE's payload straight from
 *              the leased buffer, both on stream 1 of the queue, so no other request's bytes come between.
 *              Headers without a payload (read, flush, trim, write-zeroes) that arrive in one batch are
 *              gathered into a run and sent as one member on the same stream.
 *   reply      one 16-byte receive of a simple reply header is kept in flight. Its cookie (tag | gen << 16)
 *              names the request; a READ's payload is then received straight into that request's leased
 *              buffer, and only after that is the next header received, so the byte stream is read in order.
 *   loss       an unknown cookie, a bad magic, a failed send or receive, EOF or a request older than
 *              --timeout drops the connection (shutdown). Without --reconnect everything held and everything
 *              new fails with EIO. With it, a worker thread connects again with backoff (the queue thread
 *              never blocks), the queue swaps the new socket into its fixed-file slot once nothing of the old
 *              one is in flight, and resends what it held, in the order it first sent it. Acknowledged writes no
 *              FLUSH had covered when a connection was lost make the next FLUSH fail (durable()).
 *   teardown   a request the engine ends (a drain) is forgotten at once (on_release): no reply, resend or run
 *              touches it again, and nothing more goes on that queue's wire.
 *
 * Only simple replies are negotiated: a simple READ reply is one header followed by exactly the request's
 * bytes, which one receive puts into the lease. Structured replies may split a read into chunks at any offset
 * and describe holes (zeroes the engine would have to write into the lease from nowhere) in any order; they
 * bring error strings and sparse reads, which a block device cannot use.
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "nbd.h"
#include "../../native/uring_compat.h"

#ifndef IORING_TIMEOUT_MULTISHOT
#define IORING_TIMEOUT_MULTISHOT (1U << 6) /* 6.4+ */
#endif

/* ---- target state ---- */

enum send_mode { SEND_FIXED, SEND_ZC, SEND_COPY };
static const char *const send_names[] = {"fixed", "zc", "copy"};

enum conn_state { CONN_UP, CONN_RECONNECTING, CONN_DEAD };

/* One connection, used by one queue. `fd` is replaced by that queue's thread on reconnect and closed at
 * deinit, after every queue thread has ended. */
struct conn {
	int fd = -1;
	int evfd = -1; /* the reconnect worker wakes the queue through it */
	std::atomic<int> state{CONN_UP};
	std::atomic<unsigned> reconnects{0};
	/* Handed over by the worker under nbd::mu. */
	int new_fd = -1;
	bool failed = false;
};

struct nbd {
	struct server srv;
	unsigned reconnect = 0;
	enum send_mode send = SEND_FIXED;
	struct export_info ei {};
	std::vector<std::unique_ptr<struct conn>> conns;

	/* The reconnect worker: jobs are connection indexes. */
	mutable std::mutex mu;
	std::condition_variable cv;
	std::deque<unsigned> jobs;
	bool stop = false;
	int cancel_fd = -1; /* interrupts the worker's handshake and backoff at deinit */
	std::thread worker;
	std::string last_error; /* under mu */

	/* Writes acknowledged without FUA, numbered across connections, and the highest number a successful FLUSH
	 * covered (one FLUSH covers every connection's: we open more than one only with CAN_MULTI_CONN). */
	std::atomic<uint64_t> acks{0}, flushed{0};
	/* Connections lost while holding acknowledged writes no FLUSH had covered yet (the server instance that
	 * took them is gone), and how many of those losses a failed FLUSH has reported. */
	std::atomic<uint32_t> losses{0}, reported{0};
};

/* ---- small helpers ---- */

static std::string json_str(const std::string &s)
{
	std::string o = "\"";
	for (unsigned char c : s) {
		if (c == '"' || c == '\\') {
			o += '\\';
			o += (char)c;
		} else if (c < 0x20) {
			char b[8];
			snprintf(b, sizeof(b), "\\u%04x", c);
			o += b;
		} else {
			o += (char)c;
		}
	}
	return o + "\"";
}

/* NBD error values are their Linux errno; anything else counts as NBD_EINVAL, as the protocol says. */
static int nbd_errno(uint32_t e)
{
	switch (e) {
	case 1:
		return -EPERM;
	case 5:
		return -EIO;
	case 12:
		return -ENOMEM;
	case 22:
		return -EINVAL;
	case 28:
		return -ENOSPC;
	case 75:
		return -EOVERFLOW;
	case 95:
		return -EOPNOTSUPP;
	case 108:
		return -ESHUTDOWN;
	default:
		return -EINVAL;
	}
}

/* A reconnected export must still be the one the device describes. */
static bool same_export(const struct export_info &was, const struct export_info &now)
{
	const uint16_t used = NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
			      NBD_FLAG_CAN_MULTI_CONN;
	return now.size == was.size && (now.flags & was.flags & used) == (was.flags & used) &&
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

static int choose_send(struct nbd *n, const std::string &want, std::string *why)
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

static void set_error(struct nbd *n, const std::string &why)
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
				why = n->srv.endpoint + ": the export changed across the reconnect (size or flags)";
				break;
			}
			if (fd < 0)
				fprintf(stderr, "nbd: connection %u: reconnect attempt %u of %u failed: %s\n", i, a + 1,
					n->reconnect, why.c_str());
		}
		lk.lock();
		struct conn *c = n->conns[i].get();
		c->new_fd = fd >= 0 ? fd : -1;
		c->failed = fd < 0;
		if (fd < 0)
			n->last_error = "reconnect failed: " + why;
		else
			fprintf(stderr, "nbd: connection %u: reconnected to %s\n", i, n->srv.endpoint.c_str());
		uint64_t one = 1;
		(void)!write(c->evfd, &one, sizeof(one));
	}
}

/* ---- init / deinit (libuv's pool, then the JavaScript thread) ---- */

static void nbd_free(struct nbd *n)
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

static int init_fail(struct target *t, struct nbd *n, int r, const std::string &why)
{
	/* The engine reports strerror(-r); the sentence goes to the log and to cfg for the engine to show. */
	fprintf(stderr, "nbd: %s\n", why.c_str());
	t->cfg.strs["error"] = "nbd: " + why;
	t->cfg.fds.clear();
	nbd_free(n);
	return r;
}

static int nbd_init(struct target *t)
{
	auto *n = new nbd();
	const struct target_config &cfg = t->cfg;
	std::string why;
	auto str = [&cfg](const char *k) {
		auto it = cfg.strs.find(k);
		return it == cfg.strs.end() ? std::string() : it->second;
	};
	n->reconnect = (unsigned)std::max<int64_t>(0, cfg.num("reconnect", 0));
	int r = nbd_server_from(cfg, &n->srv, &why);
	if (r == 0)
		r = choose_send(n, str("send"), &why);
	if (r < 0)
		return init_fail(t, n, r, why);

	/* The first connection says whether more are allowed. */
	int fd = nbd_handshake(n->srv, -1, &n->ei, &why);
	if (fd < 0)
		return init_fail(t, n, fd, why);
	n->conns.push_back(std::make_unique<conn>());
	n->conns[0]->fd = fd;
	int64_t queues = cfg.num("queues", 1);
	bool multi = n->ei.flags & NBD_FLAG_CAN_MULTI_CONN;
	if (queues > 1 && !multi)
		return init_fail(t, n, -EINVAL, n->srv.endpoint + ": the export does not allow more than one connection "
						 "(no NBD_FLAG_CAN_MULTI_CONN): use --queues 1");
	for (int64_t q = 1; q < queues; q++) {
		struct export_info ei;
		fd = nbd_handshake(n->srv, -1, &ei, &why);
		if (fd < 0)
			return init_fail(t, n, fd, why);
		n->conns.push_back(std::make_unique<conn>());
		n->conns.back()->fd = fd;
		if (!same_export(n->ei, ei))
			return init_fail(t, n, -EPROTO, n->srv.endpoint + ": connection " + std::to_string(q) +
								 " saw a different export (size or flags)");
	}
	if (n->reconnect > 0) {
		n->cancel_fd = eventfd(0, EFD_CLOEXEC);
		if (n->cancel_fd < 0)
			return init_fail(t, n, -errno, std::string("eventfd: ") + strerror(errno));
		for (auto &c : n->conns) {
			c->evfd = eventfd(0, EFD_CLOEXEC);
			if (c->evfd < 0)
				return init_fail(t, n, -errno, std::string("eventfd: ") + strerror(errno));
		}
		n->worker = std::thread(worker_main, n);
	}
	/* Queue q uses fixed file q + 1. */
	for (auto &c : n->conns)
		t->cfg.fds.push_back(c->fd);
	t->priv = n;
	return 0;
}

static void nbd_deinit(struct target *t)
{
	nbd_free(static_cast<struct nbd *>(t->priv));
	t->priv = nullptr;
}

/* ---- one queue (its own thread) ---- */

enum phase : uint8_t {
	P_FREE,
	P_QUEUED,  /* held, not on the wire: waiting for a connection */
	P_SENT,    /* header (and payload) sent or sending; waiting for the reply */
	P_PAYLOAD, /* the reply came; its payload is being received into the request's buffer */
};

struct slot {
	struct request *req;
	uint32_t gen;
	uint8_t phase;
	uint16_t cmd;
	uint16_t cflags;
	uint32_t seq; /* order of first sending, kept for resends */
	int64_t deadline;
	uint64_t mark; /* a FLUSH: nbd::acks when it went on the wire */
};

/* Cookies of the queue's own ring operations (queue-wide, tq_sqe without a request). */
enum { OP_RECV = 1, OP_TIMER, OP_EVENT, OP_FUPD };

struct nbd_q {
	struct nbd *n;
	struct conn *c;
	uint8_t file;
	std::vector<struct nbd_request> hdr; /* per tag: read by the kernel while the header send runs */
	/* Runs of payload-less headers: a ring of depth entries, [ring_head, ring_tail) queued or being sent
	 * (free-running counters), [open_at, ring_tail) the run still gathering; run_owner's request sends it. */
	std::vector<struct nbd_request> ring;
	uint32_t ring_head, ring_tail, open_at;
	uint16_t run_owner;
	std::vector<struct slot> slots;      /* per tag */
	struct nbd_simple_reply reply;
	uint32_t reply_got;
	unsigned wire;  /* our members in flight on the socket */
	unsigned held;  /* slots in use */
	uint32_t seq;
	uint16_t salt;    /* the top 16 bits of every cookie on this queue (see on_reply) */
	uint64_t last_ack; /* the number (nbd::acks) of the last write this connection acknowledged without FUA */
	bool recv_armed, timer_armed, timer_multishot, ev_armed, fupd_busy, stopping;
	int pending_fd; /* a reconnected socket waiting until nothing of the old one is in flight */
	int fupd_fd;    /* read by IORING_OP_FILES_UPDATE */
	uint64_t ev_val;
	struct __kernel_timespec tick;
};

static struct nbd_q *Q(struct tq *tq)
{
	return static_cast<struct nbd_q *>(tq->priv);
}

static void arm_recv(struct tq *tq, struct nbd_q *nq)
{
	if (nq->recv_armed || nq->stopping || nq->c->state.load() != CONN_UP)
		return;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_RECV);
	io_uring_prep_recv(sqe, nq->file, (char *)&nq->reply + nq->reply_got, sizeof(nq->reply) - nq->reply_got, MSG_WAITALL);
	sqe->flags |= IOSQE_FIXED_FILE;
	nq->recv_armed = true;
}

static void arm_timer(struct tq *tq, struct nbd_q *nq)
{
	if (nq->timer_armed || nq->stopping)
		return;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_TIMER);
	/* Multishot (6.4+): never re-armed, so the engine's cancel at teardown always finds it in flight and
	 * its -ECANCELED tells this queue to stop re-arming anything. */
	io_uring_prep_timeout(sqe, &nq->tick, 0, nq->timer_multishot ? IORING_TIMEOUT_MULTISHOT : 0);
	nq->timer_armed = true;
}

/* A send of headers from our own memory, on stream 1. */
static struct member *send_headers(struct nbd_q *nq, struct request *req, void *p, uint32_t len)
{
	struct member *m = add_member(req, MEMBER_SEND, nq->file);
	m->stream = 1;
	m->flags = MEMBER_F_TARGET_BUF;
	m->ptr = p;
	m->len = len;
	nq->wire++;
	return m;
}

/* The gathered run goes on the wire: one send of its headers, a member of its last request. */
static void flush_run(struct tq *tq, struct nbd_q *nq)
{
	uint32_t n = nq->ring_tail - nq->open_at;
	if (n == 0)
		return;
	struct request *req = nq->slots[nq->run_owner].req;
	send_headers(nq, req, &nq->ring[nq->open_at % nq->ring.size()], n * sizeof(struct nbd_request));
	nq->open_at = nq->ring_tail;
	request_run(tq, req);
}

static bool in_ring(const struct nbd_q *nq, const void *p)
{
	return p >= nq->ring.data() && p < nq->ring.data() + nq->ring.size();
}

/* Release a request we hold (its members may still be in flight: the engine waits for them). */
static void finish_slot(struct tq *tq, struct nbd_q *nq, uint16_t tag, int res)
{
	struct slot &s = nq->slots[tag];
	if (s.phase == P_FREE)
		return;
	if (tag == nq->run_owner && nq->ring_tail != nq->open_at)
		flush_run(tq, nq); /* the others' headers must still go, and only its member sends them */
	struct request *req = s.req;
	s.phase = P_FREE;
	s.req = nullptr;
	nq->held--;
	if (req->gen == s.gen)
		request_complete(tq, req, res);
}

static void fail_all(struct tq *tq, struct nbd_q *nq, int res)
{
	for (uint16_t tag = 0; tag < nq->slots.size(); tag++)
		finish_slot(tq, nq, tag, res);
}

/* The header (and a WRITE's payload) on stream 1: in order, never interleaved with another request. */
static void put_on_wire(struct tq *tq, struct nbd_q *nq, struct request *req)
{
	struct slot &s = nq->slots[req->tag];
	bool write = s.cmd == NBD_CMD_WRITE, flush = s.cmd == NBD_CMD_FLUSH;
	uint32_t size = nq->ring.size();
	bool gather = !write && nq->ring_tail - nq->ring_head < size;
	/* What was gathered goes before a header that is not; and a run never wraps: the ring's end closes it. */
	if (!gather || nq->ring_tail % size == 0)
		flush_run(tq, nq);
	struct nbd_request &h = gather ? nq->ring[nq->ring_tail % size] : nq->hdr[req->tag];
	h.magic = htobe32(NBD_REQUEST_MAGIC);
	h.flags = htobe16(s.cflags);
	h.type = htobe16(s.cmd);
	h.cookie = htobe64((uint64_t)req->tag | (uint64_t)req->gen << 16 | (uint64_t)nq->salt << 48);
	h.offset = htobe64(flush ? 0 : req->offset);
	h.len = htobe32(flush ? 0 : req->len);
	s.phase = P_SENT;
	s.mark = nq->n->acks.load();
	if (gather) {
		nq->ring_tail++;
		nq->run_owner = req->tag;
		return;
	}
	struct member *m = send_headers(nq, req, &h, sizeof(h));
	m->rw_flags = write ? MSG_MORE : 0; /* the payload follows at once: one segment, not two */
	if (write) {
		m = add_member(req, nq->n->send == SEND_ZC ? MEMBER_SEND_ZC : MEMBER_SEND, nq->file);
		m->stream = 1;
		m->len = req->len;
		nq->wire++;
	}
}

/* Members a request may still need on one connection: the header and a payload (sent or received). */
static bool room_for_members(const struct request *req)
{
	return req->nr_members + 2 <= MAX_MEMBERS;
}

/* Shut the socket: everything in flight on it ends at once, and the server sees us go. */
static void enter_stopping(struct nbd_q *nq)
{
	if (nq->stopping)
		return;
	nq->stopping = true;
	if (nq->c->state.load() == CONN_UP && nq->wire == 0) {
		/* Nothing half-sent on the stream: a soft disconnect is possible (never blocks: MSG_DONTWAIT). */
		struct nbd_request d = {htobe32(NBD_REQUEST_MAGIC), 0, htobe16(NBD_CMD_DISC), 0, 0, 0};
		(void)!send(nq->c->fd, &d, sizeof(d), MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	shutdown(nq->c->fd, SHUT_RDWR);
}

static void arm_event(struct tq *tq, struct nbd_q *nq)
{
	if (nq->ev_armed || nq->stopping)
		return;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_EVENT);
	io_uring_prep_read(sqe, nq->c->evfd, &nq->ev_val, sizeof(nq->ev_val), 0);
	nq->ev_armed = true;
}

/* The connection cannot be trusted any more (a protocol violation, an I/O error, EOF, a timeout). */
static void conn_lost(struct tq *tq, struct nbd_q *nq, const std::string &why)
{
	struct conn *c = nq->c;
	if (c->state.load() != CONN_UP)
		return;
	struct nbd *n = nq->n;
	set_error(n, "queue " + std::to_string(tq->q_id) + ": " + why);
	shutdown(c->fd, SHUT_RDWR);
	if (nq->last_ack > n->flushed.load() && (n->ei.flags & NBD_FLAG_SEND_FLUSH)) {
		n->losses++; /* the next FLUSH fails: see durable() */
		nq->last_ack = 0;
	}
	nq->reply_got = 0;
	nq->ring_tail = nq->open_at; /* a run not sent yet: its requests are resent or failed below */
	if (n->reconnect > 0 && !nq->stopping) {
		c->state = CONN_RECONNECTING;
		for (struct slot &s : nq->slots)
			if (s.phase == P_SENT || s.phase == P_PAYLOAD)
				s.phase = P_QUEUED; /* resent on the next connection */
		{
			std::lock_guard<std::mutex> g(n->mu);
			n->jobs.push_back(tq->q_id); /* queue q owns connection q */
		}
		n->cv.notify_one();
		arm_event(tq, nq);
		return;
	}
	c->state = CONN_DEAD;
	fail_all(tq, nq, -EIO);
}

/* Swap the reconnected socket into our fixed-file slot, once nothing of the old socket is in flight (a
 * queued member would otherwise go out on the new one). */
static void try_install(struct tq *tq, struct nbd_q *nq)
{
	if (nq->c->state.load() != CONN_RECONNECTING || nq->pending_fd < 0 || nq->wire || nq->recv_armed ||
	    nq->fupd_busy || nq->stopping)
		return;
	nq->fupd_fd = nq->pending_fd;
	struct io_uring_sqe *sqe = tq_sqe(tq, nullptr, OP_FUPD);
	io_uring_prep_files_update(sqe, &nq->fupd_fd, 1, nq->file);
	nq->fupd_busy = true;
}

static void on_installed(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->fupd_busy = false;
	int fd = nq->pending_fd;
	nq->pending_fd = -1;
	if (res < 1) {
		close(fd);
		set_error(nq->n, std::string("replacing the socket in the ring: ") + strerror(res < 0 ? -res : EIO));
		nq->c->state = CONN_DEAD;
		fail_all(tq, nq, -EIO);
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
	/* Resend what we hold, in the order it was first sent. */
	std::vector<uint16_t> order;
	for (uint16_t tag = 0; tag < nq->slots.size(); tag++)
		if (nq->slots[tag].phase == P_QUEUED)
			order.push_back(tag);
	std::sort(order.begin(), order.end(),
		  [nq](uint16_t a, uint16_t b) { return (int32_t)(nq->slots[a].seq - nq->slots[b].seq) < 0; });
	for (uint16_t tag : order) {
		struct slot &s = nq->slots[tag];
		if (s.req->gen != s.gen) {
			s.phase = P_FREE;
			nq->held--;
			continue;
		}
		if (!room_for_members(s.req)) {
			finish_slot(tq, nq, tag, -EIO);
			continue;
		}
		put_on_wire(tq, nq, s.req);
		request_run(tq, s.req);
	}
	arm_recv(tq, nq);
}

static void on_event(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->ev_armed = false;
	if (res == -ECANCELED) {
		enter_stopping(nq);
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
		try_install(tq, nq);
	} else if (failed) {
		nq->c->state = CONN_DEAD;
		fail_all(tq, nq, -EIO);
	} else {
		arm_event(tq, nq); /* a wake-up with nothing for us */
	}
}

/* A write, FLUSH or FUA request the server acknowledged: what the device may report. NBD's FLUSH covers only
 * what the server instance it reaches completed, so after a connection was lost holding acknowledged
 * writes no FLUSH had covered, the first FLUSH to complete fails with EIO (as a failed writeback would),
 * and FUA writes fail until it has: the filesystem learns that acknowledged writes may be gone. */
static int durable(struct nbd_q *nq, const struct slot &s)
{
	bool write = s.cmd == NBD_CMD_WRITE || s.cmd == NBD_CMD_TRIM || s.cmd == NBD_CMD_WRITE_ZEROES;
	bool fua = s.cflags & NBD_CMD_FLAG_FUA;
	struct nbd *n = nq->n;
	if (write && !fua)
		nq->last_ack = n->acks.fetch_add(1) + 1;
	uint64_t f = n->flushed.load();
	while (s.cmd == NBD_CMD_FLUSH && f < s.mark && !n->flushed.compare_exchange_weak(f, s.mark))
		;
	uint32_t losses = n->losses.load();
	if (s.cmd == NBD_CMD_FLUSH)
		return n->reported.exchange(losses) != losses ? -EIO : 0;
	return fua && n->reported.load() != losses ? -EIO : 0;
}

static void on_reply(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->recv_armed = false;
	if (res == -ECANCELED) {
		enter_stopping(nq);
		return;
	}
	if (nq->stopping)
		return;
	if (nq->c->state.load() != CONN_UP) {
		try_install(tq, nq); /* the dead socket's last receive */
		return;
	}
	if (res <= 0) {
		conn_lost(tq, nq, res == 0 ? "the server closed the connection" : std::string("receive: ") + strerror(-res));
		try_install(tq, nq);
		return;
	}
	nq->reply_got += res;
	if (nq->reply_got < sizeof(nq->reply)) {
		arm_recv(tq, nq); /* MSG_WAITALL cut short (a signal): the rest of the header */
		return;
	}
	nq->reply_got = 0;
	uint32_t magic = be32toh(nq->reply.magic);
	if (magic != NBD_SIMPLE_REPLY_MAGIC) {
		conn_lost(tq, nq, magic == NBD_STRUCTURED_REPLY_MAGIC ? "a structured reply, which was not negotiated"
								      : "a reply with a bad magic");
		return;
	}
	uint64_t cookie = be64toh(nq->reply.cookie);
	uint16_t tag = cookie & 0xffff;
	uint32_t gen = (uint32_t)(cookie >> 16);
	struct slot *s = (cookie >> 48) == nq->salt && tag < nq->slots.size() ? &nq->slots[tag] : nullptr;
	/* Stale (an earlier request on this tag) or never sent: the stream cannot be trusted any more. */
	if (!s || s->phase != P_SENT || s->gen != gen || s->req->gen != gen) {
		conn_lost(tq, nq, "a reply for an unknown cookie");
		return;
	}
	uint32_t err = be32toh(nq->reply.error);
	if (err == NBD_ESHUTDOWN) {
		/* The server is going away: what we hold is resent after a reconnect, or fails. */
		conn_lost(tq, nq, "the server is shutting down (NBD_ESHUTDOWN)");
		return;
	}
	if (err) {
		/* Never a payload after an error (doc/proto.md: a server that does not disconnect MUST NOT send
		 * one; nbdkit, qemu-nbd and nbd-server do not), so the next bytes are read as a header. A server
		 * that sends one anyway is caught there: its bytes would have to carry the reply magic and this
		 * queue's random salt to pass as a header, and anything else drops the connection. */
		finish_slot(tq, nq, tag, nbd_errno(err));
	} else if (s->cmd == NBD_CMD_READ) {
		/* The payload follows the header: straight into the request's buffer, before the next header. */
		struct member *m = add_member(s->req, MEMBER_RECV, nq->file);
		m->len = s->req->len;
		nq->wire++;
		s->phase = P_PAYLOAD;
		request_run(tq, s->req);
		return;
	} else {
		finish_slot(tq, nq, tag, durable(nq, *s));
	}
	arm_recv(tq, nq);
}

static void on_tick(struct tq *tq, struct nbd_q *nq, const struct io_uring_cqe *cqe)
{
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more)
		nq->timer_armed = false;
	if (cqe->res == -ECANCELED) {
		enter_stopping(nq);
		return;
	}
	if (cqe->res == -EINVAL && nq->timer_multishot) {
		nq->timer_multishot = false; /* before 6.4: one timeout at a time */
		arm_timer(tq, nq);
		return;
	}
	if (nq->stopping)
		return;
	if (nq->held) {
		int64_t now = now_ms();
		bool stuck = false, late = false;
		for (const struct slot &s : nq->slots) {
			if (s.phase == P_FREE || now < s.deadline)
				continue;
			late = true;
			stuck |= s.phase == P_SENT || s.phase == P_PAYLOAD;
		}
		if (stuck)
			conn_lost(tq, nq, "no reply within --timeout " + std::to_string(nq->n->srv.timeout_ms / 1000) + " s");
		if (late)
			for (uint16_t tag = 0; tag < nq->slots.size(); tag++)
				if (nq->slots[tag].phase != P_FREE && now >= nq->slots[tag].deadline)
					finish_slot(tq, nq, tag, -EIO);
	}
	arm_timer(tq, nq);
	try_install(tq, nq);
}

static void nbd_on_cqe(struct tq *tq, struct request *, uint64_t cookie, const struct io_uring_cqe *cqe)
{
	struct nbd_q *nq = Q(tq);
	switch (cookie) {
	case OP_RECV:
		on_reply(tq, nq, cqe->res);
		break;
	case OP_TIMER:
		on_tick(tq, nq, cqe);
		break;
	case OP_EVENT:
		on_event(tq, nq, cqe->res);
		break;
	case OP_FUPD:
		if (cqe->res == -ECANCELED)
			enter_stopping(nq);
		on_installed(tq, nq, cqe->res);
		break;
	}
}

static enum member_fold nbd_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	struct nbd_q *nq = Q(tq);
	const struct member *m = &req->members[idx];
	struct slot &s = nq->slots[req->tag];
	bool mine = s.phase != P_FREE && s.req == req && s.gen == req->gen;
	enum member_fold fold = FOLD_DEFAULT;
	nq->wire--;
	if (m->kind == MEMBER_SEND && in_ring(nq, m->ptr))
		nq->ring_head += m->len / sizeof(struct nbd_request); /* runs complete in stream order */
	if (res == -ECANCELED) {
		/* Only the engine cancels our members: the queue is draining. */
		enter_stopping(nq);
	} else if (res <= 0) {
		/* Part of a header or payload may have gone: the byte stream is broken. */
		conn_lost(tq, nq, std::string(m->kind == MEMBER_RECV ? "receive: " : "send: ") +
					  (res == 0 ? "the connection closed" : strerror(-res)));
		if (mine && s.phase == P_QUEUED)
			fold = FOLD_IGNORE; /* it goes again on the next connection */
	} else if (m->kind == MEMBER_RECV) {
		/* The whole payload is in the buffer (the engine continued short receives). */
		if (mine)
			finish_slot(tq, nq, req->tag, 0);
		arm_recv(tq, nq);
	}
	try_install(tq, nq);
	return fold;
}

/* The engine ended a request we held (the queue is draining): forget its slot, so that no reply, resend
 * or gathered run touches it again, and put nothing more on this queue's wire. */
static void nbd_on_release(struct tq *tq, struct request *req)
{
	struct nbd_q *nq = Q(tq);
	struct slot &s = nq->slots[req->tag];
	if (s.phase != P_FREE && s.req == req && s.gen == req->gen) {
		s.phase = P_FREE;
		s.req = nullptr;
		nq->held--;
	}
	nq->ring_tail = nq->open_at; /* a run not sent yet: its requests are being released too */
	enter_stopping(nq);
}

static int nbd_queue_io(struct tq *tq, struct request *req)
{
	struct nbd_q *nq = Q(tq);
	struct nbd *n = nq->n;
	uint16_t flags = n->ei.flags, cmd, cflags = 0;
	bool fua = req->flags & UBLK_IO_F_FUA;
	/* The kernel sends FLUSH only to a device with a write cache, and FUA only to one that declared it: a
	 * connection that cannot carry them (a server re-attached by `recover` that lost the capability) fails
	 * the request rather than let it look durable. */
	if ((fua && !(flags & NBD_FLAG_SEND_FUA)) || (req->op == UBLK_IO_OP_FLUSH && !(flags & NBD_FLAG_SEND_FLUSH))) {
		req->result = -EIO;
		return QUEUE_IO_DONE;
	}
	switch (req->op) {
	case UBLK_IO_OP_READ:
		cmd = NBD_CMD_READ;
		break;
	case UBLK_IO_OP_WRITE:
		if (flags & NBD_FLAG_READ_ONLY) {
			req->result = -EPERM;
			return QUEUE_IO_DONE;
		}
		cmd = NBD_CMD_WRITE;
		cflags = fua ? NBD_CMD_FLAG_FUA : 0;
		/* --send copy: this request's bytes go through a copy; every other request stays on the lease. */
		req->copy = n->send == SEND_COPY;
		break;
	case UBLK_IO_OP_FLUSH:
		cmd = NBD_CMD_FLUSH;
		break;
	case UBLK_IO_OP_DISCARD:
		if (!(flags & NBD_FLAG_SEND_TRIM) || (flags & NBD_FLAG_READ_ONLY)) {
			req->result = -EOPNOTSUPP;
			return QUEUE_IO_DONE;
		}
		cmd = NBD_CMD_TRIM;
		cflags = fua ? NBD_CMD_FLAG_FUA : 0;
		break;
	case UBLK_IO_OP_WRITE_ZEROES:
		if (!(flags & NBD_FLAG_SEND_WRITE_ZEROES) || (flags & NBD_FLAG_READ_ONLY)) {
			req->result = -EOPNOTSUPP;
			return QUEUE_IO_DONE;
		}
		cmd = NBD_CMD_WRITE_ZEROES;
		cflags = (fua ? NBD_CMD_FLAG_FUA : 0) | ((req->flags & UBLK_IO_F_NOUNMAP) ? NBD_CMD_FLAG_NO_HOLE : 0);
		break;
	default:
		req->result = -EOPNOTSUPP;
		return QUEUE_IO_DONE;
	}
	if ((cmd == NBD_CMD_READ || cmd == NBD_CMD_WRITE) && req->len > n->ei.max_payload) {
		req->result = -EIO; /* the TypeScript side refuses such a server; never sent */
		return QUEUE_IO_DONE;
	}
	if (nq->stopping || tq_draining(tq) || nq->c->state.load() == CONN_DEAD) {
		req->result = -EIO; /* nothing new goes on the wire of a queue that is stopping */
		return QUEUE_IO_DONE;
	}
	struct slot &s = nq->slots[req->tag];
	nq->held++;
	s = {req, req->gen, P_QUEUED, cmd, cflags, nq->seq++, now_ms() + n->srv.timeout_ms, 0};
	if (nq->c->state.load() == CONN_UP)
		put_on_wire(tq, nq, req); /* the engine issues what queue_io added */
	return QUEUE_IO_PENDING;
}

static int nbd_queue_init(struct tq *tq)
{
	struct nbd *n = static_cast<struct nbd *>(tq->t->priv);
	if (tq->q_id >= n->conns.size()) {
		/* init opened one connection per queue it was told of (cfg.nums["queues"]). queue_fail's sentence
		 * becomes the queue's error, which `add` shows; the device is rolled back. */
		queue_fail(tq, "nbd: " + n->srv.endpoint + ": " +
				       (n->ei.flags & NBD_FLAG_CAN_MULTI_CONN
					    ? "no connection for this queue: the engine did not say how many queues to connect"
					    : "the export does not allow more than one connection (no NBD_FLAG_CAN_MULTI_CONN)") +
				       "; use --queues 1");
		return -EINVAL;
	}
	auto *nq = new nbd_q();
	nq->n = n;
	nq->c = n->conns[tq->q_id].get();
	nq->file = (uint8_t)(tq->q_id + 1);
	nq->hdr.resize(tq->depth);
	nq->ring.resize(tq->depth);
	nq->slots.assign(tq->depth, slot{});
	nq->pending_fd = -1;
	nq->timer_multishot = true;
	/* Never 0, the likeliest top of stray bytes (zeroes) that could pass for a header. */
	(void)!getrandom(&nq->salt, sizeof(nq->salt), GRND_NONBLOCK);
	nq->salt |= 1;
	int64_t tick = std::min<int64_t>(1000, std::max<int64_t>(100, n->srv.timeout_ms / 4));
	nq->tick = {tick / 1000, (tick % 1000) * 1000000};
	tq->priv = nq;
	arm_timer(tq, nq);
	arm_recv(tq, nq);
	return 0;
}

static void nbd_queue_idle(struct tq *tq)
{
	flush_run(tq, Q(tq));
}

static void nbd_queue_deinit(struct tq *tq)
{
	struct nbd_q *nq = Q(tq);
	if (nq->pending_fd >= 0)
		close(nq->pending_fd);
	delete nq;
	tq->priv = nullptr;
}

static std::string nbd_status(const struct target *t)
{
	const struct nbd *n = static_cast<const struct nbd *>(t->priv);
	unsigned up = 0, dead = 0, reconnecting = 0, reconnects = 0;
	for (const auto &c : n->conns) {
		int st = c->state.load();
		up += st == CONN_UP;
		dead += st == CONN_DEAD;
		reconnecting += st == CONN_RECONNECTING;
		reconnects += c->reconnects.load();
	}
	const char *state = up == n->conns.size()     ? "connected"
			    : reconnecting		? "reconnecting"
			    : dead == n->conns.size()	? "disconnected"
							: "degraded";
	const struct export_info &ei = n->ei;
	std::string err;
	{
		std::lock_guard<std::mutex> g(n->mu);
		err = n->last_error;
	}
	std::string s = "{";
	s += "\"endpoint\":" + json_str(n->srv.endpoint);
	s += ",\"export\":" + json_str(n->srv.export_name);
	s += ",\"state\":\"" + std::string(state) + "\"";
	s += ",\"connections\":" + std::to_string(up);
	s += ",\"size\":" + std::to_string(ei.size);
	s += ",\"flags\":" + std::to_string(ei.flags);
	s += ",\"minBlock\":" + std::to_string(ei.min_block);
	s += ",\"prefBlock\":" + std::to_string(ei.pref_block);
	s += ",\"maxPayload\":" + std::to_string(ei.max_payload);
	s += ",\"readOnly\":" + std::string(ei.flags & NBD_FLAG_READ_ONLY ? "true" : "false");
	s += ",\"multiConn\":" + std::string(ei.flags & NBD_FLAG_CAN_MULTI_CONN ? "true" : "false");
	s += ",\"handshake\":\"" + std::string(ei.go ? "NBD_OPT_GO" : "NBD_OPT_EXPORT_NAME") + "\"";
	s += ",\"replies\":\"simple\"";
	s += ",\"send\":\"" + std::string(send_names[n->send]) + "\"";
	s += ",\"reconnects\":" + std::to_string(reconnects);
	if (!err.empty())
		s += ",\"lastError\":" + json_str(err);
	return s + "}";
}

static const struct target_ops nbd_target_ops = {
	.name = "nbd",
	.init = nbd_init,
	.deinit = nbd_deinit,
	.queue_init = nbd_queue_init,
	.queue_deinit = nbd_queue_deinit,
	.queue_io = nbd_queue_io,
	.on_member = nbd_on_member,
	.on_release = nbd_on_release,
	.on_cqe = nbd_on_cqe,
	.queue_idle = nbd_queue_idle,
	.queue_ops = 4, /* the reply receive, the timer, the reconnect wake-up, the socket swap */
	.status = nbd_status,
};
UBLK_TARGET(nbd_target_ops)
