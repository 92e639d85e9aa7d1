/*
 * The control commands exposed to JavaScript. Each runs on libuv's thread pool (Napi::AsyncWorker) and
 * resolves a Promise, so the event loop never waits on the kernel.
 */
#include <napi.h>
#include <string.h>

#include "ctrl.h"
#include "exports.h"
#include "js_args.h"

namespace {

Napi::Error make_error(Napi::Env env, const std::string &command, int err)
{
	std::string name = errno_name(err);
	Napi::Error e = Napi::Error::New(env, command + ": " + name + " (" + strerror(err) + ")");
	e.Set("code", Napi::String::New(env, name));
	e.Set("errno", Napi::Number::New(env, -err));
	e.Set("command", Napi::String::New(env, command));
	return e;
}

Napi::Object dev_info_to_js(Napi::Env env, const struct ublksrv_ctrl_dev_info &i)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("devId", i.dev_id);
	o.Set("nrHwQueues", i.nr_hw_queues);
	o.Set("queueDepth", i.queue_depth);
	o.Set("state", i.state);
	o.Set("maxIoBufBytes", i.max_io_buf_bytes);
	o.Set("ublksrvPid", i.ublksrv_pid);
	o.Set("flags", Napi::BigInt::New(env, (uint64_t)i.flags));
	o.Set("ublksrvFlags", Napi::BigInt::New(env, (uint64_t)i.ublksrv_flags));
	o.Set("ownerUid", i.owner_uid);
	o.Set("ownerGid", i.owner_gid);
	return o;
}

void params_from_js(const Napi::Object &o, struct ublk_params *p)
{
	memset(p, 0, sizeof(*p));
	p->len = sizeof(*p);
	p->types = UBLK_PARAM_TYPE_BASIC;
	p->basic.attrs = get_u64(o, "attrs", 0);
	p->basic.logical_bs_shift = get_u64(o, "logicalBsShift", 9);
	p->basic.physical_bs_shift = get_u64(o, "physicalBsShift", p->basic.logical_bs_shift);
	p->basic.io_opt_shift = get_u64(o, "ioOptShift", 0);
	p->basic.io_min_shift = get_u64(o, "ioMinShift", p->basic.logical_bs_shift);
	p->basic.max_sectors = get_u64(o, "maxSectors", 0);
	p->basic.chunk_sectors = get_u64(o, "chunkSectors", 0);
	p->basic.dev_sectors = get_u64(o, "devSectors", 0);
	if (o.Has("discard") && o.Get("discard").IsObject()) {
		Napi::Object d = o.Get("discard").As<Napi::Object>();
		p->types |= UBLK_PARAM_TYPE_DISCARD;
		p->discard.discard_alignment = get_u64(d, "alignment", 0);
		p->discard.discard_granularity = get_u64(d, "granularity", 4096);
		p->discard.max_discard_sectors = get_u64(d, "maxDiscardSectors", 0);
		p->discard.max_write_zeroes_sectors = get_u64(d, "maxWriteZeroesSectors", 0);
		p->discard.max_discard_segments = p->discard.max_discard_sectors ? 1 : 0;
	}
	if (o.Has("dmaAlignment") && o.Get("dmaAlignment").IsNumber()) {
		p->types |= UBLK_PARAM_TYPE_DMA_ALIGN;
		p->dma.alignment = get_u64(o, "dmaAlignment", 0);
	}
}

Napi::Object params_to_js(Napi::Env env, const struct ublk_params &p)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("types", p.types);
	o.Set("attrs", p.basic.attrs);
	o.Set("logicalBsShift", p.basic.logical_bs_shift);
	o.Set("physicalBsShift", p.basic.physical_bs_shift);
	o.Set("ioOptShift", p.basic.io_opt_shift);
	o.Set("ioMinShift", p.basic.io_min_shift);
	o.Set("maxSectors", p.basic.max_sectors);
	o.Set("chunkSectors", p.basic.chunk_sectors);
	o.Set("devSectors", Napi::Number::New(env, (double)p.basic.dev_sectors));
	if (p.types & UBLK_PARAM_TYPE_DISCARD) {
		Napi::Object d = Napi::Object::New(env);
		d.Set("alignment", p.discard.discard_alignment);
		d.Set("granularity", p.discard.discard_granularity);
		d.Set("maxDiscardSectors", p.discard.max_discard_sectors);
		d.Set("maxWriteZeroesSectors", p.discard.max_write_zeroes_sectors);
		o.Set("discard", d);
	}
	if (p.types & UBLK_PARAM_TYPE_DMA_ALIGN)
		o.Set("dmaAlignment", p.dma.alignment);
	if (p.types & UBLK_PARAM_TYPE_DEVT) {
		o.Set("charMajor", p.devt.char_major);
		o.Set("charMinor", p.devt.char_minor);
		o.Set("diskMajor", p.devt.disk_major);
		o.Set("diskMinor", p.devt.disk_minor);
	}
	return o;
}

/* What a control command returns to JavaScript. */
enum ctrl_reply { REPLY_NONE, REPLY_FEATURES, REPLY_DEV_INFO, REPLY_PARAMS };

class CtrlWorker : public Napi::AsyncWorker {
      public:
	CtrlWorker(Napi::Env env, const char *name, uint32_t op, uint32_t dev_id, enum ctrl_reply reply)
	    : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), reply_(reply)
	{
		memset(&c_, 0, sizeof(c_));
		memset(&buf_, 0, sizeof(buf_));
		c_.name = name;
		c_.op = op;
		c_.cmd.dev_id = dev_id;
		c_.cmd.queue_id = 0xffff;
	}
	struct ublksrv_ctrl_cmd &cmd() { return c_.cmd; }
	/* The in/out payload; big enough for dev_info, params, the features word, and a dev path prefix. */
	union payload {
		uint64_t features;
		struct ublksrv_ctrl_dev_info info;
		struct ublk_params params;
		char raw[4096 + sizeof(struct ublk_params)];
	};
	payload &buf() { return buf_; }
	void set_payload(size_t len, size_t offset = 0)
	{
		c_.cmd.addr = (uint64_t)(uintptr_t)buf_.raw;
		c_.cmd.len = len;
		payload_off_ = offset;
	}
	Napi::Promise promise() { return deferred_.Promise(); }

	void Execute() override
	{
		const char *where;
		res_ = ctrl_run(&c_, &where);
		where_ = where;
	}
	void OnOK() override
	{
		Napi::Env env = Env();
		if (res_ < 0) {
			deferred_.Reject(make_error(env, where_, -res_).Value());
			return;
		}
		const char *p = buf_.raw + payload_off_;
		switch (reply_) {
		case REPLY_NONE:
			deferred_.Resolve(Napi::Number::New(env, res_));
			break;
		case REPLY_FEATURES:
			deferred_.Resolve(Napi::BigInt::New(env, (uint64_t)buf_.features));
			break;
		case REPLY_DEV_INFO:
			deferred_.Resolve(dev_info_to_js(env, *reinterpret_cast<const struct ublksrv_ctrl_dev_info *>(p)));
			break;
		case REPLY_PARAMS:
			deferred_.Resolve(params_to_js(env, buf_.params));
			break;
		}
	}

      private:
	Napi::Promise::Deferred deferred_;
	struct ctrl_cmd c_;
	payload buf_;
	size_t payload_off_ = 0;
	enum ctrl_reply reply_;
	int res_ = 0;
	std::string where_;
};

uint32_t dev_id_arg(const Napi::CallbackInfo &info)
{
	return info[0].As<Napi::Number>().Uint32Value();
}

Napi::Value queue_ctrl(CtrlWorker *w)
{
	Napi::Promise p = w->promise();
	w->Queue();
	return p;
}

Napi::Value GetFeatures(const Napi::CallbackInfo &info)
{
	auto *w = new CtrlWorker(info.Env(), "GET_FEATURES", UBLK_U_CMD_GET_FEATURES, 0, REPLY_FEATURES);
	w->set_payload(8);
	return queue_ctrl(w);
}

Napi::Value AddDev(const Napi::CallbackInfo &info)
{
	Napi::Object o = info[0].As<Napi::Object>();
	uint32_t id = (uint32_t)get_u64(o, "devId", 0xffffffffu);
	auto *w = new CtrlWorker(info.Env(), "ADD_DEV", UBLK_U_CMD_ADD_DEV, id, REPLY_DEV_INFO);
	struct ublksrv_ctrl_dev_info &di = w->buf().info;
	di.dev_id = id;
	di.nr_hw_queues = get_u64(o, "queues", 1);
	di.queue_depth = get_u64(o, "depth", 128);
	di.max_io_buf_bytes = get_u64(o, "maxIoBufBytes", 1 << 20);
	di.flags = get_u64(o, "flags", 0);
	di.ublksrv_flags = get_u64(o, "ublksrvFlags", 0);
	w->set_payload(sizeof(di));
	return queue_ctrl(w);
}

/* Commands whose only argument is the device id (plus data[0] for some). */
template <uint32_t OP>
Napi::Value SimpleCmd(const Napi::CallbackInfo &info, const char *name)
{
	auto *w = new CtrlWorker(info.Env(), name, OP, dev_id_arg(info), REPLY_NONE);
	if (info.Length() > 1 && !info[1].IsUndefined())
		w->cmd().data[0] = to_u64(info[1]);
	return queue_ctrl(w);
}

#define SIMPLE(fn, OP, NAME) \
	Napi::Value fn(const Napi::CallbackInfo &info) { return SimpleCmd<OP>(info, NAME); }
SIMPLE(DelDev, UBLK_U_CMD_DEL_DEV, "DEL_DEV")
SIMPLE(DelDevAsync, UBLK_U_CMD_DEL_DEV_ASYNC, "DEL_DEV_ASYNC")
SIMPLE(StartDev, UBLK_U_CMD_START_DEV, "START_DEV")
SIMPLE(StopDev, UBLK_U_CMD_STOP_DEV, "STOP_DEV")
SIMPLE(TryStopDev, UBLK_U_CMD_TRY_STOP_DEV, "TRY_STOP_DEV")
SIMPLE(QuiesceDev, UBLK_U_CMD_QUIESCE_DEV, "QUIESCE_DEV")
SIMPLE(UpdateSize, UBLK_U_CMD_UPDATE_SIZE, "UPDATE_SIZE")
SIMPLE(StartUserRecovery, UBLK_U_CMD_START_USER_RECOVERY, "START_USER_RECOVERY")
SIMPLE(EndUserRecovery, UBLK_U_CMD_END_USER_RECOVERY, "END_USER_RECOVERY")
#undef SIMPLE

Napi::Value SetParams(const Napi::CallbackInfo &info)
{
	auto *w = new CtrlWorker(info.Env(), "SET_PARAMS", UBLK_U_CMD_SET_PARAMS, dev_id_arg(info), REPLY_NONE);
	params_from_js(info[1].As<Napi::Object>(), &w->buf().params);
	w->set_payload(sizeof(struct ublk_params));
	return queue_ctrl(w);
}

Napi::Value GetParams(const Napi::CallbackInfo &info)
{
	auto *w = new CtrlWorker(info.Env(), "GET_PARAMS", UBLK_U_CMD_GET_PARAMS, dev_id_arg(info), REPLY_PARAMS);
	w->buf().params.len = sizeof(struct ublk_params);
	w->set_payload(sizeof(struct ublk_params));
	return queue_ctrl(w);
}

Napi::Value GetDevInfo(const Napi::CallbackInfo &info)
{
	auto *w = new CtrlWorker(info.Env(), "GET_DEV_INFO", UBLK_U_CMD_GET_DEV_INFO, dev_id_arg(info), REPLY_DEV_INFO);
	w->set_payload(sizeof(struct ublksrv_ctrl_dev_info));
	return queue_ctrl(w);
}

/* GET_DEV_INFO2 carries the char node's path in front of the payload (required by unprivileged devices). */
Napi::Value GetDevInfo2(const Napi::CallbackInfo &info)
{
	uint32_t id = dev_id_arg(info);
	auto *w = new CtrlWorker(info.Env(), "GET_DEV_INFO2", UBLK_U_CMD_GET_DEV_INFO2, id, REPLY_DEV_INFO);
	std::string path = "/dev/ublkc" + std::to_string(id);
	memcpy(w->buf().raw, path.c_str(), path.size() + 1);
	w->cmd().dev_path_len = path.size() + 1;
	w->set_payload(path.size() + 1 + sizeof(struct ublksrv_ctrl_dev_info), path.size() + 1);
	return queue_ctrl(w);
}

} // namespace

void control_exports(Napi::Env env, Napi::Object exports)
{
	exports.Set("getFeatures", Napi::Function::New(env, GetFeatures));
	exports.Set("addDev", Napi::Function::New(env, AddDev));
	exports.Set("delDev", Napi::Function::New(env, DelDev));
	exports.Set("delDevAsync", Napi::Function::New(env, DelDevAsync));
	exports.Set("startDev", Napi::Function::New(env, StartDev));
	exports.Set("stopDev", Napi::Function::New(env, StopDev));
	exports.Set("tryStopDev", Napi::Function::New(env, TryStopDev));
	exports.Set("quiesceDev", Napi::Function::New(env, QuiesceDev));
	exports.Set("setParams", Napi::Function::New(env, SetParams));
	exports.Set("getParams", Napi::Function::New(env, GetParams));
	exports.Set("getDevInfo", Napi::Function::New(env, GetDevInfo));
	exports.Set("getDevInfo2", Napi::Function::New(env, GetDevInfo2));
	exports.Set("updateSize", Napi::Function::New(env, UpdateSize));
	exports.Set("startUserRecovery", Napi::Function::New(env, StartUserRecovery));
	exports.Set("endUserRecovery", Napi::Function::New(env, EndUserRecovery));
}
