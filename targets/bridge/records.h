/*
 * The records between the bridge's two halves: their one definition. The queue threads write descriptors
 * (bridge.cc), JavaScript writes completions (src/bridge.ts), the addon reads those (bridge_napi.cc); the
 * addon exports every size and offset (bridge.layout), and src/bridge.ts reads them from there.
 */
#pragma once
#include <stdint.h>

/* JavaScript reads and writes them little-endian: they are copied as the host lays them out. */
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the bridge's records are little-endian");

/* A request, to JavaScript (24 bytes, no padding). */
struct bridge_desc {
	uint16_t q;
	uint16_t tag;
	uint32_t gen;
	uint32_t op_flags; /* UBLK_IO_OP_* | UBLK_IO_F_* | BRIDGE_F_BYTES */
	uint32_t len;
	uint64_t offset;
};
/* In op_flags, above the kernel's UBLK_IO_F_*: the write's bytes are in the tag's buffer already. */
#define BRIDGE_F_BYTES (1u << 31)

/* A completion, from JavaScript (24 bytes). With file 0, result is the request's; with a fixed file (1..n),
 * the request is served as one READ or WRITE member on it at file_off, on the lease. */
struct bridge_done {
	uint16_t q;
	uint16_t tag;
	uint32_t gen;
	int32_t result;
	uint8_t file;
	uint8_t pad[3];
	uint64_t file_off;
};

/* Where a completion's routing travels to its queue thread (remote_completion.arg, for bridge_on_remote). */
enum { BRIDGE_ARG_FILE, BRIDGE_ARG_FILE_OFF };
