/*
 * The ublk kernel ABI as ublk-ts uses it, written from include/uapi/linux/ublk_cmd.h (Linux 7.2).
 * Our own copy because distributions ship old kernel headers; static_asserts pin every layout.
 */
#pragma once
#include <linux/ioctl.h>
#include <stddef.h>
#include <stdint.h>

/* Control commands: _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd). */
#define UBLK_CTRL_IOR(nr) _IOR('u', nr, struct ublksrv_ctrl_cmd)
#define UBLK_CTRL_IOWR(nr) _IOWR('u', nr, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_GET_QUEUE_AFFINITY UBLK_CTRL_IOR(0x01)
#define UBLK_U_CMD_GET_DEV_INFO UBLK_CTRL_IOR(0x02)
#define UBLK_U_CMD_ADD_DEV UBLK_CTRL_IOWR(0x04)
#define UBLK_U_CMD_DEL_DEV UBLK_CTRL_IOWR(0x05)
#define UBLK_U_CMD_START_DEV UBLK_CTRL_IOWR(0x06)
#define UBLK_U_CMD_STOP_DEV UBLK_CTRL_IOWR(0x07)
#define UBLK_U_CMD_SET_PARAMS UBLK_CTRL_IOWR(0x08)
#define UBLK_U_CMD_GET_PARAMS UBLK_CTRL_IOR(0x09)
#define UBLK_U_CMD_START_USER_RECOVERY UBLK_CTRL_IOWR(0x10)
#define UBLK_U_CMD_END_USER_RECOVERY UBLK_CTRL_IOWR(0x11)
#define UBLK_U_CMD_GET_DEV_INFO2 UBLK_CTRL_IOR(0x12)
#define UBLK_U_CMD_GET_FEATURES UBLK_CTRL_IOR(0x13)
#define UBLK_U_CMD_DEL_DEV_ASYNC UBLK_CTRL_IOR(0x14)
#define UBLK_U_CMD_UPDATE_SIZE UBLK_CTRL_IOWR(0x15)
#define UBLK_U_CMD_QUIESCE_DEV UBLK_CTRL_IOWR(0x16)
#define UBLK_U_CMD_TRY_STOP_DEV UBLK_CTRL_IOWR(0x17)

/* I/O commands: _IOWR('u', nr, struct ublksrv_io_cmd). */
#define UBLK_U_IO_FETCH_REQ _IOWR('u', 0x20, struct ublksrv_io_cmd)
#define UBLK_U_IO_COMMIT_AND_FETCH_REQ _IOWR('u', 0x21, struct ublksrv_io_cmd)
#define UBLK_U_IO_NEED_GET_DATA _IOWR('u', 0x22, struct ublksrv_io_cmd)
#define UBLK_U_IO_REGISTER_IO_BUF _IOWR('u', 0x23, struct ublksrv_io_cmd)
#define UBLK_U_IO_UNREGISTER_IO_BUF _IOWR('u', 0x24, struct ublksrv_io_cmd)

#define UBLK_IO_RES_OK 0
#define UBLK_IO_RES_NEED_GET_DATA 1
#define UBLK_IO_RES_ABORT (-19) /* -ENODEV */

/* Feature flags (ublksrv_ctrl_dev_info.flags, GET_FEATURES). */
#define UBLK_F_SUPPORT_ZERO_COPY (1ULL << 0)
#define UBLK_F_URING_CMD_COMP_IN_TASK (1ULL << 1)
#define UBLK_F_NEED_GET_DATA (1ULL << 2)
#define UBLK_F_USER_RECOVERY (1ULL << 3)
#define UBLK_F_USER_RECOVERY_REISSUE (1ULL << 4)
#define UBLK_F_UNPRIVILEGED_DEV (1ULL << 5)
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#define UBLK_F_USER_COPY (1ULL << 7)
#define UBLK_F_ZONED (1ULL << 8)
#define UBLK_F_USER_RECOVERY_FAIL_IO (1ULL << 9)
#define UBLK_F_UPDATE_SIZE (1ULL << 10)
#define UBLK_F_AUTO_BUF_REG (1ULL << 11)
#define UBLK_F_QUIESCE (1ULL << 12)
#define UBLK_F_PER_IO_DAEMON (1ULL << 13)
#define UBLK_F_BUF_REG_OFF_DAEMON (1ULL << 14)
#define UBLK_F_BATCH_IO (1ULL << 15)
#define UBLK_F_INTEGRITY (1ULL << 16)
#define UBLK_F_SAFE_STOP_DEV (1ULL << 17)
#define UBLK_F_NO_AUTO_PART_SCAN (1ULL << 18)
#define UBLK_F_SHMEM_ZC (1ULL << 19)

/* Device states. */
#define UBLK_S_DEV_DEAD 0
#define UBLK_S_DEV_LIVE 1
#define UBLK_S_DEV_QUIESCED 2
#define UBLK_S_DEV_FAIL_IO 3

/* Operations in ublksrv_io_desc.op_flags bits 0..7. */
#define UBLK_IO_OP_READ 0
#define UBLK_IO_OP_WRITE 1
#define UBLK_IO_OP_FLUSH 2
#define UBLK_IO_OP_DISCARD 3
#define UBLK_IO_OP_WRITE_SAME 4
#define UBLK_IO_OP_WRITE_ZEROES 5

/* Flags in op_flags, defined in place (not shifted). */
#define UBLK_IO_F_FAILFAST_DEV (1U << 8)
#define UBLK_IO_F_FAILFAST_TRANSPORT (1U << 9)
#define UBLK_IO_F_FAILFAST_DRIVER (1U << 10)
#define UBLK_IO_F_META (1U << 11)
#define UBLK_IO_F_FUA (1U << 13)
#define UBLK_IO_F_NOUNMAP (1U << 15)
#define UBLK_IO_F_SWAP (1U << 16)
#define UBLK_IO_F_NEED_REG_BUF (1U << 17)

/* Parameters. */
#define UBLK_PARAM_TYPE_BASIC (1U << 0)
#define UBLK_PARAM_TYPE_DISCARD (1U << 1)
#define UBLK_PARAM_TYPE_DEVT (1U << 2)
#define UBLK_PARAM_TYPE_ZONED (1U << 3)
#define UBLK_PARAM_TYPE_DMA_ALIGN (1U << 4)
#define UBLK_PARAM_TYPE_SEGMENT (1U << 5)
#define UBLK_ATTR_READ_ONLY (1U << 0)
#define UBLK_ATTR_ROTATIONAL (1U << 1)
#define UBLK_ATTR_VOLATILE_CACHE (1U << 2)
#define UBLK_ATTR_FUA (1U << 3)

/* User copy: pread/pwrite offsets on /dev/ublkcN. */
#define UBLKSRV_IO_BUF_OFFSET 0x80000000ULL
#define UBLK_TAG_OFF 25
#define UBLK_QID_OFF 41
#define UBLK_MAX_QUEUE_DEPTH 4096
#define UBLK_MAX_NR_QUEUES 4096
/* Per-queue stride of the descriptor mmap area. */
#define UBLK_DESC_AREA_STRIDE(page) ((((size_t)UBLK_MAX_QUEUE_DEPTH * 24) + (page) - 1) / (page) * (page))

#define UBLK_AUTO_BUF_REG_FALLBACK (1U << 0)

struct ublksrv_ctrl_cmd {
	uint32_t dev_id;
	uint16_t queue_id;
	uint16_t len;
	uint64_t addr;
	uint64_t data[1];
	uint16_t dev_path_len;
	uint16_t pad;
	uint32_t reserved;
};

struct ublksrv_ctrl_dev_info {
	uint16_t nr_hw_queues;
	uint16_t queue_depth;
	uint16_t state;
	uint16_t pad0;
	uint32_t max_io_buf_bytes;
	uint32_t dev_id;
	int32_t ublksrv_pid;
	uint32_t pad1;
	uint64_t flags;
	uint64_t ublksrv_flags;
	uint32_t owner_uid;
	uint32_t owner_gid;
	uint64_t reserved1;
	uint64_t reserved2;
};

struct ublksrv_io_desc {
	uint32_t op_flags;
	uint32_t nr_sectors;
	uint64_t start_sector;
	uint64_t addr;
};

struct ublksrv_io_cmd {
	uint16_t q_id;
	uint16_t tag;
	int32_t result;
	uint64_t addr;
};

struct ublk_param_basic {
	uint32_t attrs;
	uint8_t logical_bs_shift;
	uint8_t physical_bs_shift;
	uint8_t io_opt_shift;
	uint8_t io_min_shift;
	uint32_t max_sectors;
	uint32_t chunk_sectors;
	uint64_t dev_sectors;
	uint64_t virt_boundary_mask;
};

struct ublk_param_discard {
	uint32_t discard_alignment;
	uint32_t discard_granularity;
	uint32_t max_discard_sectors;
	uint32_t max_write_zeroes_sectors;
	uint16_t max_discard_segments;
	uint16_t reserved0;
};

struct ublk_param_devt {
	uint32_t char_major;
	uint32_t char_minor;
	uint32_t disk_major;
	uint32_t disk_minor;
};

struct ublk_param_zoned {
	uint32_t max_open_zones;
	uint32_t max_active_zones;
	uint32_t max_zone_append_sectors;
	uint8_t reserved[20];
};

struct ublk_param_dma_align {
	uint32_t alignment;
	uint8_t pad[4];
};

struct ublk_param_segment {
	uint64_t seg_boundary_mask;
	uint32_t max_segment_size;
	uint16_t max_segments;
	uint8_t pad[2];
};

struct ublk_params {
	uint32_t len;
	uint32_t types;
	struct ublk_param_basic basic;
	struct ublk_param_discard discard;
	struct ublk_param_devt devt;
	struct ublk_param_zoned zoned;
	struct ublk_param_dma_align dma;
	struct ublk_param_segment seg;
};

/* Layouts from the 7.2 header (x86-64). */
static_assert(sizeof(struct ublksrv_ctrl_cmd) == 32, "ctrl_cmd");
static_assert(sizeof(struct ublksrv_ctrl_dev_info) == 64, "dev_info");
static_assert(offsetof(struct ublksrv_ctrl_dev_info, flags) == 24, "dev_info.flags");
static_assert(offsetof(struct ublksrv_ctrl_dev_info, owner_uid) == 40, "dev_info.owner_uid");
static_assert(sizeof(struct ublksrv_io_desc) == 24, "io_desc");
static_assert(sizeof(struct ublksrv_io_cmd) == 16, "io_cmd");
static_assert(sizeof(struct ublk_param_basic) == 32, "basic");
static_assert(sizeof(struct ublk_param_discard) == 20, "discard");
static_assert(offsetof(struct ublk_params, discard) == 40, "params.discard");
static_assert(offsetof(struct ublk_params, devt) == 60, "params.devt");
static_assert(offsetof(struct ublk_params, zoned) == 76, "params.zoned");
static_assert(offsetof(struct ublk_params, dma) == 108, "params.dma");
static_assert(offsetof(struct ublk_params, seg) == 120, "params.seg");
static_assert(sizeof(struct ublk_params) == 136, "params up to segment");
