/* The ABI table: the kernel's command numbers, flags and struct sizes as this build sees them. */
#include <napi.h>

#include "exports.h"
#include "ublk_abi.h"

Napi::Object abi_table(Napi::Env env)
{
	Napi::Object abi = Napi::Object::New(env);
	Napi::Object cmds = Napi::Object::New(env);
#define CMD(n) cmds.Set(#n, Napi::Number::New(env, (uint32_t)UBLK_U_CMD_##n))
	CMD(GET_QUEUE_AFFINITY); CMD(GET_DEV_INFO); CMD(ADD_DEV); CMD(DEL_DEV); CMD(START_DEV); CMD(STOP_DEV);
	CMD(SET_PARAMS); CMD(GET_PARAMS); CMD(START_USER_RECOVERY); CMD(END_USER_RECOVERY); CMD(GET_DEV_INFO2);
	CMD(GET_FEATURES); CMD(DEL_DEV_ASYNC); CMD(UPDATE_SIZE); CMD(QUIESCE_DEV); CMD(TRY_STOP_DEV);
#undef CMD
	Napi::Object io = Napi::Object::New(env);
#define IOC(n) io.Set(#n, Napi::Number::New(env, (uint32_t)UBLK_U_IO_##n))
	IOC(FETCH_REQ); IOC(COMMIT_AND_FETCH_REQ); IOC(NEED_GET_DATA); IOC(REGISTER_IO_BUF); IOC(UNREGISTER_IO_BUF);
#undef IOC
	Napi::Object flags = Napi::Object::New(env);
#define F(n) flags.Set(#n, Napi::BigInt::New(env, (uint64_t)UBLK_F_##n))
	F(SUPPORT_ZERO_COPY); F(URING_CMD_COMP_IN_TASK); F(NEED_GET_DATA); F(USER_RECOVERY);
	F(USER_RECOVERY_REISSUE); F(UNPRIVILEGED_DEV); F(CMD_IOCTL_ENCODE); F(USER_COPY); F(ZONED);
	F(USER_RECOVERY_FAIL_IO); F(UPDATE_SIZE); F(AUTO_BUF_REG); F(QUIESCE); F(PER_IO_DAEMON);
	F(BUF_REG_OFF_DAEMON); F(BATCH_IO); F(INTEGRITY); F(SAFE_STOP_DEV); F(NO_AUTO_PART_SCAN); F(SHMEM_ZC);
#undef F
	Napi::Object attrs = Napi::Object::New(env);
#define A(n) attrs.Set(#n, Napi::Number::New(env, UBLK_ATTR_##n))
	A(READ_ONLY); A(ROTATIONAL); A(VOLATILE_CACHE); A(FUA);
#undef A
	Napi::Object sizes = Napi::Object::New(env);
	sizes.Set("ctrlCmd", (uint32_t)sizeof(struct ublksrv_ctrl_cmd));
	sizes.Set("devInfo", (uint32_t)sizeof(struct ublksrv_ctrl_dev_info));
	sizes.Set("ioDesc", (uint32_t)sizeof(struct ublksrv_io_desc));
	sizes.Set("ioCmd", (uint32_t)sizeof(struct ublksrv_io_cmd));
	sizes.Set("params", (uint32_t)sizeof(struct ublk_params));
	abi.Set("commands", cmds);
	abi.Set("ioCommands", io);
	abi.Set("flags", flags);
	abi.Set("attrs", attrs);
	abi.Set("sizes", sizes);
	abi.Set("userCopyOffset", Napi::Function::New(env, [](const Napi::CallbackInfo &info) {
		uint64_t q = info[0].As<Napi::Number>().Uint32Value(), tag = info[1].As<Napi::Number>().Uint32Value();
		return Napi::BigInt::New(info.Env(), (uint64_t)(UBLKSRV_IO_BUF_OFFSET + (q << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF)));
	}));
	return abi;
}
