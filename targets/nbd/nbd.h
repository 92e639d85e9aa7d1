/*
 * The NBD protocol as the nbd target speaks it (doc/proto.md of NetworkBlockDevice/nbd): its constants and
 * wire structs, and reaching a server. handshake.cc connects and negotiates (blocking, off the queue
 * threads); the target itself is nbd.cc, connection.cc and wire.cc (state.h).
 */
#ifndef UBLK_TS_NBD_H
#define UBLK_TS_NBD_H

#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <string>
#include <vector>

#include "../../native/target.h"

#define NBD_MAGIC 0x4e42444d41474943ull      /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_CLISERV_MAGIC 0x00420281861253ull /* oldstyle */
#define NBD_REP_MAGIC 0x3e889045565a9ull
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2
#define NBD_FLAG_C_FIXED_NEWSTYLE 1
#define NBD_FLAG_C_NO_ZEROES 2

#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_GO 7
#define NBD_REP_ACK 1
#define NBD_REP_INFO 3
#define NBD_REP_FLAG_ERROR (1u << 31)
#define NBD_REP_ERR_UNSUP (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_FLAG_ERROR | 7)
#define NBD_INFO_EXPORT 0
#define NBD_INFO_BLOCK_SIZE 3

#define NBD_FLAG_HAS_FLAGS (1 << 0)
#define NBD_FLAG_READ_ONLY (1 << 1)
#define NBD_FLAG_SEND_FLUSH (1 << 2)
#define NBD_FLAG_SEND_FUA (1 << 3)
#define NBD_FLAG_ROTATIONAL (1 << 4)
#define NBD_FLAG_SEND_TRIM (1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)
#define NBD_FLAG_CAN_MULTI_CONN (1 << 8)

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_FLAG_FUA (1 << 0)
#define NBD_CMD_FLAG_NO_HOLE (1 << 1)

#define NBD_ESHUTDOWN 108

struct __attribute__((packed)) nbd_request {
	uint32_t magic;
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
};
static_assert(sizeof(struct nbd_request) == 28, "NBD request header is 28 bytes");

struct __attribute__((packed)) nbd_simple_reply {
	uint32_t magic;
	uint32_t error;
	uint64_t cookie;
};
static_assert(sizeof(struct nbd_simple_reply) == 16, "NBD simple reply is 16 bytes");

struct export_info {
	uint64_t size;
	uint16_t flags;
	uint32_t min_block, pref_block, max_payload;
	bool go; /* NBD_OPT_GO answered (else the NBD_OPT_EXPORT_NAME fallback) */
};

struct address {
	struct sockaddr_storage sa;
	socklen_t len;
};

/* Where the export is and how long reaching it may take: --socket or --host/--port, --export, --timeout. */
struct server {
	std::string endpoint; /* as shown: unix:/path or host:port */
	bool tcp = false;
	std::vector<struct address> addrs;
	std::string export_name;
	int64_t timeout_ms = 30000;
};

/* Fills *s from the target's options; -errno with *why when they name no server. */
int nbd_server_from(const struct target_config &cfg, struct server *s, std::string *why);

/* Connects and negotiates; returns a blocking socket in transmission phase, or -errno with *why. A write to
 * the cancel fd (-1: none) ends it with -ECANCELED. */
int nbd_handshake(const struct server &s, int cancel, struct export_info *ei, std::string *why);

static inline int64_t now_ms()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
