/*
 * nbd: a ublk device in front of an NBD server (nbdkit, qemu-nbd, nbd-server), speaking the transmission
 * phase of the protocol (doc/proto.md of NetworkBlockDevice/nbd) on the queue rings. This file is the target
 * as the engine sees it: its ops, init and deinit, and the status `list` shows.
 *
 *   init       on libuv's pool: for each connection a blocking handshake bounded by --timeout (handshake.cc).
 *              The sockets become fixed files 1..n: one per queue when the server sets
 *              NBD_FLAG_CAN_MULTI_CONN, else one and a single queue (connection.cc).
 *   transmit   requests, replies, timeouts and teardown on each queue's ring (wire.cc).
 *   loss       an unknown cookie, a bad magic, a failed send or receive, EOF or a request older than
 *              --timeout drops the connection (shutdown). Without --reconnect everything held and everything
 *              new fails with EIO. With it, a worker thread connects again with backoff (the queue thread
 *              never blocks), the queue swaps the new socket into its fixed-file slot once nothing of the old
 *              one is in flight, and resends what it held, in the order it first sent it (connection.cc).
 *              Acknowledged writes no FLUSH had covered when a connection was lost make the next FLUSH fail
 *              (durable() in wire.cc).
 *
 * Only simple replies are negotiated: a simple READ reply is one header followed by exactly the request's
 * bytes, which one receive puts into the lease. Structured replies may split a read into chunks at any offset
 * and describe holes (zeroes the engine would have to write into the lease from nowhere) in any order; they
 * bring error strings and sparse reads, which a block device cannot use.
 */
#include <errno.h>
#include <stdio.h>

#include <algorithm>
#include <string>

#include "state.h"

static const char *const send_names[] = {"fixed", "zc", "copy"};

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

/* ---- init / deinit (libuv's pool, then the JavaScript thread) ---- */

static int init_fail(struct target *t, struct nbd *n, int r, const std::string &why)
{
	/* The engine reports strerror(-r); the sentence goes to the log and to t->error for the engine to show. */
	fprintf(stderr, "nbd: %s\n", why.c_str());
	t->error = "nbd: " + why;
	t->cfg.fds.clear();
	nbd_free(n);
	return r;
}

static int nbd_init(struct target *t)
{
	auto *n = new nbd();
	const struct target_config &cfg = t->cfg;
	std::string why;
	n->reconnect = (unsigned)std::max<int64_t>(0, cfg.num("reconnect", 0));
	int r = nbd_server_from(cfg, &n->srv, &why);
	if (r == 0)
		r = nbd_choose_send(n, cfg.str("send") ? *cfg.str("send") : std::string(), &why);
	if (r == 0)
		r = nbd_connect(n, t->nr_queues, &why);
	if (r < 0)
		return init_fail(t, n, r, why);
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
	struct export_info ei;
	std::string err;
	{
		std::lock_guard<std::mutex> g(n->mu); /* the reconnect worker grows ei.size */
		err = n->last_error;
		ei = n->ei;
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

static const char *const nbd_options[] = {"host", "port", "socket", "export", "timeout", "reconnect", "send", nullptr};

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
	.queue_settle = nbd_queue_settle,
	.queue_ops = 4, /* the reply receive, the timer, the reconnect wake-up, the socket swap */
	.status = nbd_status,
	.options = nbd_options,
};
UBLK_TARGET(nbd_target_ops)
