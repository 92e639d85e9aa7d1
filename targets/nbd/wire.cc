/*
 * One queue's transmission phase (its own thread): each request the queue holds is a slot, and a slot's
 * phase says where it is on the connection.
 *
 *   request    the 28-byte request header from per-tag target memory, then a WRITE's payload straight from
 *              the leased buffer, both on stream 1 of the queue, so no other request's bytes come between.
 *              Headers without a payload (read, flush, trim, write-zeroes) that arrive in one batch are
 *              gathered into a run and sent as one member on the same stream.
 *   reply      one 16-byte receive of a simple reply header is kept in flight. Its cookie (tag | gen << 16)
 *              names the request; a READ's payload is then received straight into that request's leased
 *              buffer, and only after that is the next header received, so the byte stream is read in order.
 *   timeout    a request older than --timeout fails with EIO; one still on the wire also drops the connection.
 *   teardown   a request the engine ends (a drain) is forgotten at once (on_release): no reply, resend or run
 *              touches it again, and nothing more goes on that queue's wire.
 *
 * A request's life is step(): every event of a request, from whichever source, goes through its one switch
 * on the slot's phase. nbd_queue_io takes the request into a free slot, and it is
 *   P_QUEUED   until EV_CONNECTED (a connection is up: at once in nbd_queue_io, or nbd_resend after a
 *              reconnect) puts its header on the wire (into the gathered run, or sent at once with a WRITE's
 *              payload), and then
 *   P_SENT     until EV_REPLY (on_reply read its reply header): an error or a command without a reply payload
 *              ends it (durable() for writes and FLUSH), a READ's payload is received next, and it is
 *   P_PAYLOAD  until EV_RECEIVED (nbd_on_member: that receive completed) ends it.
 * A successful send changes no phase: the reply may be read before the send's completion (a short send
 * continued, SEND_ZC's notification), and a run's send is a member of its last request only. A failed send
 * or receive loses the connection (connection.cc): with a reconnect to come, EV_LOST puts P_SENT and
 * P_PAYLOAD back to P_QUEUED for a resend, else every slot fails (EV_FAIL, as a timeout does); a drain
 * forgets a slot (EV_RELEASED).
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "state.h"

#ifndef IORING_TIMEOUT_MULTISHOT
#define IORING_TIMEOUT_MULTISHOT (1U << 6) /* 6.4+ */
#endif

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

void nbd_arm_recv(struct tq *tq, struct nbd_q *nq)
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

/* The header (and a WRITE's payload) on stream 1: in order, never interleaved with another request. */
static void put_on_wire(struct tq *tq, struct nbd_q *nq, const struct slot &s)
{
	struct request *req = s.req;
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

/* The slot is free again, its request no longer ours. */
static void forget(struct nbd_q *nq, struct slot &s)
{
	s.phase = P_FREE;
	s.req = nullptr;
	nq->held--;
}

/* Release the slot's request with res (its members may still be in flight: the engine waits for them). */
static void end(struct tq *tq, struct nbd_q *nq, struct slot &s, int res)
{
	if (&s == &nq->slots[nq->run_owner] && nq->ring_tail != nq->open_at)
		flush_run(tq, nq); /* the others' headers must still go, and only its member sends them */
	struct request *req = s.req;
	uint32_t gen = s.gen;
	forget(nq, s);
	if (req->gen == gen)
		request_complete(tq, req, res);
}

/* What happens to a request: step()'s events. */
enum event : uint8_t {
	EV_CONNECTED, /* a connection is up to send it on */
	EV_REPLY,     /* its reply header was read; arg is its NBD error */
	EV_RECEIVED,  /* its READ payload is in the buffer */
	EV_LOST,      /* its connection is gone, and another one is coming */
	EV_FAIL,      /* it ends now with arg (-errno): a timeout, a dead connection */
	EV_RELEASED,  /* the engine ended it (a drain) */
};

/* One request's life (the top of this file). Returns false for an event its phase does not take. */
static bool step(struct tq *tq, struct nbd_q *nq, struct slot &s, enum event ev, int arg = 0)
{
	/* In any phase it is held in. */
	if (s.phase != P_FREE && ev == EV_FAIL) {
		end(tq, nq, s, arg);
		return true;
	}
	if (s.phase != P_FREE && ev == EV_RELEASED) {
		forget(nq, s);
		return true;
	}
	switch (s.phase) {
	case P_FREE:
		return false; /* ended already */

	case P_QUEUED:
		if (ev == EV_RECEIVED) {
			/* A READ's payload that arrived whole before its connection was lost: it is done. */
			end(tq, nq, s, 0);
			return true;
		}
		if (ev != EV_CONNECTED)
			return false;
		if (s.req->gen != s.gen) {
			forget(nq, s); /* its request ended while it waited */
			return true;
		}
		if (!room_for_members(s.req)) {
			end(tq, nq, s, -EIO); /* resent too often to describe once more */
			return true;
		}
		put_on_wire(tq, nq, s);
		s.phase = P_SENT;
		s.mark = nq->n->acks.load();
		return true;

	case P_SENT:
		if (ev == EV_LOST) {
			s.phase = P_QUEUED; /* resent on the next connection */
			return true;
		}
		if (ev != EV_REPLY)
			return false;
		if (arg == NBD_ESHUTDOWN) {
			/* The server is going away: what we hold is resent after a reconnect, or fails. */
			nbd_conn_lost(tq, nq, "the server is shutting down (NBD_ESHUTDOWN)");
		} else if (arg) {
			/* Never a payload after an error (doc/proto.md: a server that does not disconnect MUST NOT
			 * send one; nbdkit, qemu-nbd and nbd-server do not), so the next bytes are read as a header.
			 * A server that sends one anyway is caught there: its bytes would have to carry the reply
			 * magic and this queue's random salt to pass as a header, and anything else drops the
			 * connection. */
			end(tq, nq, s, nbd_errno((uint32_t)arg));
		} else if (s.cmd == NBD_CMD_READ) {
			/* The payload follows the header: straight into the request's buffer, before the next header. */
			struct member *m = add_member(s.req, MEMBER_RECV, nq->file);
			m->len = s.req->len;
			nq->wire++;
			s.phase = P_PAYLOAD;
			request_run(tq, s.req);
		} else {
			end(tq, nq, s, durable(nq, s));
		}
		return true;

	case P_PAYLOAD:
		if (ev == EV_LOST) {
			s.phase = P_QUEUED; /* resent on the next connection, unless its payload is whole already */
			return true;
		}
		if (ev != EV_RECEIVED)
			return false;
		end(tq, nq, s, 0);
		return true;
	}
	return false;
}

/* req's slot, if req is still the request it holds. */
static struct slot *held_slot(struct nbd_q *nq, const struct request *req)
{
	struct slot &s = nq->slots[req->tag];
	return s.phase != P_FREE && s.req == req && s.gen == req->gen ? &s : nullptr;
}

void nbd_fail_all(struct tq *tq, struct nbd_q *nq, int res)
{
	for (struct slot &s : nq->slots)
		step(tq, nq, s, EV_FAIL, res);
}

void nbd_hold_all(struct tq *tq, struct nbd_q *nq)
{
	for (struct slot &s : nq->slots)
		step(tq, nq, s, EV_LOST);
}

/* Shut the socket: everything in flight on it ends at once, and the server sees us go. */
void nbd_enter_stopping(struct nbd_q *nq)
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

/* After a reconnect: resend what we hold, in the order it was first sent. */
void nbd_resend(struct tq *tq, struct nbd_q *nq)
{
	std::vector<uint16_t> order;
	for (uint16_t tag = 0; tag < nq->slots.size(); tag++)
		if (nq->slots[tag].phase == P_QUEUED)
			order.push_back(tag);
	std::sort(order.begin(), order.end(),
		  [nq](uint16_t a, uint16_t b) { return (int32_t)(nq->slots[a].seq - nq->slots[b].seq) < 0; });
	for (uint16_t tag : order) {
		struct slot &s = nq->slots[tag];
		step(tq, nq, s, EV_CONNECTED);
		if (s.phase == P_SENT)
			request_run(tq, s.req); /* not in queue_io: the engine issues nothing by itself */
	}
	nbd_arm_recv(tq, nq);
}

/* The settle FLUSH's cookie: a tag no slot has (depths stop at 4096). */
static uint64_t settle_cookie(const struct nbd_q *nq)
{
	return 0xffff | (uint64_t)nq->salt << 48;
}

static void settled(struct tq *tq, struct nbd_q *nq, const std::string &failure)
{
	nq->settle = SETTLE_DONE;
	if (!failure.empty())
		nbd_set_error(nq->n, "queue " + std::to_string(tq->q_id) + ": handing over: " + failure);
}

/* Handing over (upgrade): NBD's FLUSH covers only what its own connection completed, so the writes this
 * connection acknowledged that no FLUSH covered yet are flushed on it before the next server's connections
 * take over. A server that does not answer within --timeout is left to it (the last error says so). */
bool nbd_queue_settle(struct tq *tq)
{
	struct nbd_q *nq = Q(tq);
	struct nbd *n = nq->n;
	bool up = !nq->stopping && nq->c->state.load() == CONN_UP;
	if (nq->settle == SETTLE_SENT && !up)
		settled(tq, nq, "the connection went before the FLUSH was answered");
	if (nq->settle != SETTLE_NONE)
		return nq->settle == SETTLE_SENT;
	nq->settle = SETTLE_DONE;
	if (!up || nq->wire || nq->last_ack <= n->flushed.load() || !(n->ei.flags & NBD_FLAG_SEND_FLUSH))
		return false;
	nq->settle_req = {htobe32(NBD_REQUEST_MAGIC), 0, htobe16(NBD_CMD_FLUSH), htobe64(settle_cookie(nq)), 0, 0};
	/* Nothing else is on this wire any more: one small send, which never blocks. */
	if (send(nq->c->fd, &nq->settle_req, sizeof(nq->settle_req), MSG_DONTWAIT | MSG_NOSIGNAL) != sizeof(nq->settle_req)) {
		settled(tq, nq, std::string("the FLUSH could not be sent: ") + strerror(errno));
		return false;
	}
	nq->settle = SETTLE_SENT;
	nq->settle_deadline = now_ms() + n->srv.timeout_ms;
	nbd_arm_recv(tq, nq);
	return true;
}

static void on_reply(struct tq *tq, struct nbd_q *nq, int res)
{
	nq->recv_armed = false;
	if (res == -ECANCELED) {
		nbd_enter_stopping(nq);
		return;
	}
	if (nq->stopping)
		return;
	if (nq->c->state.load() != CONN_UP) {
		nbd_try_install(tq, nq); /* the dead socket's last receive */
		return;
	}
	if (res <= 0) {
		nbd_conn_lost(tq, nq, res == 0 ? "the server closed the connection" : std::string("receive: ") + strerror(-res));
		nbd_try_install(tq, nq);
		return;
	}
	nq->reply_got += res;
	if (nq->reply_got < sizeof(nq->reply)) {
		nbd_arm_recv(tq, nq); /* MSG_WAITALL cut short (a signal): the rest of the header */
		return;
	}
	nq->reply_got = 0;
	uint32_t magic = be32toh(nq->reply.magic);
	if (magic != NBD_SIMPLE_REPLY_MAGIC) {
		nbd_conn_lost(tq, nq, magic == NBD_STRUCTURED_REPLY_MAGIC ? "a structured reply, which was not negotiated"
								      : "a reply with a bad magic");
		return;
	}
	uint64_t cookie = be64toh(nq->reply.cookie);
	if (nq->settle == SETTLE_SENT && cookie == settle_cookie(nq)) {
		uint32_t err = be32toh(nq->reply.error);
		settled(tq, nq, err ? "the FLUSH failed: " + std::string(strerror(-nbd_errno(err))) : std::string());
		return; /* nothing more comes on this connection */
	}
	uint16_t tag = cookie & 0xffff;
	uint32_t gen = (uint32_t)(cookie >> 16);
	struct slot *s = (cookie >> 48) == nq->salt && tag < nq->slots.size() ? &nq->slots[tag] : nullptr;
	bool known = s && s->phase != P_FREE && s->gen == gen && s->req->gen == gen;
	/* Stale (an earlier request on this tag), not sent yet or answered already (a phase that takes no
	 * reply): the stream cannot be trusted any more. */
	if (!known || !step(tq, nq, *s, EV_REPLY, (int)be32toh(nq->reply.error))) {
		nbd_conn_lost(tq, nq, "a reply for an unknown cookie");
		return;
	}
	if (s->phase != P_PAYLOAD)
		nbd_arm_recv(tq, nq); /* else the payload comes first */
}

static void on_tick(struct tq *tq, struct nbd_q *nq, const struct io_uring_cqe *cqe)
{
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!more)
		nq->timer_armed = false;
	if (cqe->res == -ECANCELED) {
		nbd_enter_stopping(nq);
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
			nbd_conn_lost(tq, nq, "no reply within --timeout " + std::to_string(nq->n->srv.timeout_ms / 1000) + " s");
		if (late)
			for (struct slot &s : nq->slots)
				if (s.phase != P_FREE && now >= s.deadline)
					step(tq, nq, s, EV_FAIL, -EIO);
	}
	if (nq->settle == SETTLE_SENT && now_ms() >= nq->settle_deadline)
		settled(tq, nq, "no reply to the FLUSH within --timeout " + std::to_string(nq->n->srv.timeout_ms / 1000) + " s");
	arm_timer(tq, nq);
	nbd_try_install(tq, nq);
}

void nbd_on_cqe(struct tq *tq, struct request *, uint64_t cookie, const struct io_uring_cqe *cqe)
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
		nbd_on_event(tq, nq, cqe->res);
		break;
	case OP_FUPD:
		if (cqe->res == -ECANCELED)
			nbd_enter_stopping(nq);
		nbd_on_installed(tq, nq, cqe->res);
		break;
	}
}

enum member_fold nbd_on_member(struct tq *tq, struct request *req, unsigned idx, int res)
{
	struct nbd_q *nq = Q(tq);
	const struct member *m = &req->members[idx];
	struct slot *s = held_slot(nq, req);
	enum member_fold fold = FOLD_DEFAULT;
	nq->wire--;
	if (m->kind == MEMBER_SEND && in_ring(nq, m->ptr))
		nq->ring_head += m->len / sizeof(struct nbd_request); /* runs complete in stream order */
	if (res == -ECANCELED) {
		/* Only the engine cancels our members: the queue is draining. */
		nbd_enter_stopping(nq);
	} else if (res <= 0) {
		/* Part of a header or payload may have gone: the byte stream is broken. */
		nbd_conn_lost(tq, nq, std::string(m->kind == MEMBER_RECV ? "receive: " : "send: ") +
					  (res == 0 ? "the connection closed" : strerror(-res)));
		if (s && s->phase == P_QUEUED)
			fold = FOLD_IGNORE; /* it goes again on the next connection */
	} else if (m->kind == MEMBER_RECV) {
		/* The whole payload is in the buffer (the engine continued short receives). */
		if (s)
			step(tq, nq, *s, EV_RECEIVED);
		nbd_arm_recv(tq, nq);
	}
	nbd_try_install(tq, nq);
	return fold;
}

/* The engine ended a request we held (the queue is draining): forget its slot, so that no reply, resend
 * or gathered run touches it again, and put nothing more on this queue's wire. */
void nbd_on_release(struct tq *tq, struct request *req)
{
	struct nbd_q *nq = Q(tq);
	if (struct slot *s = held_slot(nq, req))
		step(tq, nq, *s, EV_RELEASED);
	nq->ring_tail = nq->open_at; /* a run not sent yet: its requests are being released too */
	nbd_enter_stopping(nq);
}

int nbd_queue_io(struct tq *tq, struct request *req)
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
	case UBLK_IO_OP_WRITE_ZEROES: {
		bool trim = req->op == UBLK_IO_OP_DISCARD;
		if (!(flags & (trim ? NBD_FLAG_SEND_TRIM : NBD_FLAG_SEND_WRITE_ZEROES)) || (flags & NBD_FLAG_READ_ONLY)) {
			req->result = -EOPNOTSUPP;
			return QUEUE_IO_DONE;
		}
		cmd = trim ? NBD_CMD_TRIM : NBD_CMD_WRITE_ZEROES;
		cflags = (fua ? NBD_CMD_FLAG_FUA : 0) | (!trim && (req->flags & UBLK_IO_F_NOUNMAP) ? NBD_CMD_FLAG_NO_HOLE : 0);
		break;
	}
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
		step(tq, nq, s, EV_CONNECTED); /* the engine issues what queue_io added */
	return QUEUE_IO_PENDING;
}

int nbd_queue_init(struct tq *tq)
{
	struct nbd *n = static_cast<struct nbd *>(tq->t->priv);
	if (tq->q_id >= n->conns.size()) {
		/* init opened one connection per queue it was told of (t->nr_queues). queue_fail's sentence
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
	nbd_arm_recv(tq, nq);
	return 0;
}

void nbd_queue_idle(struct tq *tq)
{
	flush_run(tq, Q(tq));
}

void nbd_queue_deinit(struct tq *tq)
{
	struct nbd_q *nq = Q(tq);
	if (nq->pending_fd >= 0)
		close(nq->pending_fd);
	delete nq;
	tq->priv = nullptr;
}
