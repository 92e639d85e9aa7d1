/*
 * N-API surface. Every control command and every blocking step of a device runs on libuv's thread pool
 * (Napi::AsyncWorker) and resolves a Promise, so the event loop never waits on the kernel.
 */
#include <napi.h>
#include <string.h>

#include "ctrl.h"
#include "device.h"

void pidfd_exports(Napi::Env env, Napi::Object exports); /* pidfd.cc */

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

uint64_t to_u64(const Napi::Value &v)
{
	if (v.IsBigInt()) {
		bool lossless;
		return v.As<Napi::BigInt>().Uint64Value(&lossless);
	}
	return (uint64_t)v.As<Napi::Number>().Int64Value();
}

uint64_t get_u64(const Napi::Object &o, const char *key, uint64_t dflt)
{
	return o.Has(key) && !o.Get(key).IsUndefined() ? to_u64(o.Get(key)) : dflt;
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

/* ---- Device: the data plane of one device, owned by the daemon process ---- */

class Device : public Napi::ObjectWrap<Device> {
      public:
	static Napi::Function Init(Napi::Env env)
	{
		return DefineClass(env, "Device",
				   {InstanceMethod("open", &Device::Open), InstanceMethod("start", &Device::Start),
				    InstanceMethod("wait", &Device::Wait),
				    InstanceMethod("drain", &Device::Drain), InstanceMethod("join", &Device::Join),
				    InstanceMethod("forceStop", &Device::ForceStop), InstanceMethod("close", &Device::Close),
				    InstanceMethod("status", &Device::Status), InstanceMethod("stats", &Device::Stats),
				    InstanceMethod("complete", &Device::Complete), InstanceMethod("charFd", &Device::CharFd)});
	}

	Device(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Device>(info)
	{
		Napi::Env env = info.Env();
		Napi::Object o = info[0].As<Napi::Object>();
		struct device_ctx &c = dev_.ctx;
		c.dev_id = get_u64(o, "devId", 0);
		c.nr_queues = get_u64(o, "queues", 1);
		c.depth = get_u64(o, "depth", 128);
		c.max_io_bytes = get_u64(o, "maxIoBufBytes", 1 << 20);
		c.user_copy = o.Has("userCopy") && o.Get("userCopy").ToBoolean();
		c.ublkc_fd = -1;
		std::string mode = o.Get("mode").As<Napi::String>().Utf8Value();
		if (mode == "copy")
			c.mode = MODE_COPY;
		else if (mode == "user-copy")
			c.mode = MODE_USER_COPY;
		else if (mode == "lease")
			c.mode = MODE_LEASE;
		else if (mode == "auto-lease")
			c.mode = MODE_AUTO_LEASE;
		else {
			Napi::TypeError::New(env, "unknown data mode: " + mode).ThrowAsJavaScriptException();
			return;
		}
		std::string tname = o.Get("target").As<Napi::String>().Utf8Value();
		c.tgt.ops = target_find(tname);
		if (!c.tgt.ops) {
			Napi::TypeError::New(env, "no native target named " + tname).ThrowAsJavaScriptException();
			return;
		}
		if (o.Has("fds")) {
			Napi::Array fds = o.Get("fds").As<Napi::Array>();
			for (uint32_t i = 0; i < fds.Length(); i++)
				c.tgt.cfg.fds.push_back(fds.Get(i).As<Napi::Number>().Int32Value());
		}
		/* For a target whose connections follow the queues (nbd: one per queue). */
		c.tgt.cfg.nums["queues"] = c.nr_queues;
		if (o.Has("handler") && o.Get("handler").IsFunction()) {
			/* The bridge's way to JavaScript: batches of descriptors, from the queue threads. */
			js_fn_ = Napi::ThreadSafeFunction::New(env, o.Get("handler").As<Napi::Function>(), "ublk-ts bridge", 0, 1);
			js_ = {post_to_js, &js_fn_};
			c.tgt.cfg.js = &js_;
		}
		if (o.Has("buffers") && o.Get("buffers").IsArray()) {
			/* The tag buffers, JavaScript's: referenced here so that no collection frees one while a
			 * queue thread copies into it. */
			Napi::Array a = o.Get("buffers").As<Napi::Array>();
			if (a.Length() != (size_t)c.nr_queues * c.depth) {
				Napi::TypeError::New(env, "buffers: one per tag of every queue expected").ThrowAsJavaScriptException();
				return;
			}
			for (uint32_t i = 0; i < a.Length(); i++) {
				Napi::Value v = a.Get(i);
				if (!v.IsBuffer() || v.As<Napi::Buffer<uint8_t>>().Length() < c.max_io_bytes) {
					Napi::TypeError::New(env, "buffers: each must be a Buffer of maxIoBufBytes").ThrowAsJavaScriptException();
					return;
				}
				c.tgt.cfg.bufs.push_back(v.As<Napi::Buffer<uint8_t>>().Data());
				buf_refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
			}
		}
		if (o.Has("options") && o.Get("options").IsObject()) {
			/* number -> nums, number[] -> lists, string -> strs */
			Napi::Object opts = o.Get("options").As<Napi::Object>();
			Napi::Array keys = opts.GetPropertyNames();
			for (uint32_t i = 0; i < keys.Length(); i++) {
				std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
				Napi::Value v = opts.Get(k);
				if (v.IsString()) {
					c.tgt.cfg.strs[k] = v.As<Napi::String>().Utf8Value();
				} else if (v.IsArray()) {
					Napi::Array a = v.As<Napi::Array>();
					for (uint32_t j = 0; j < a.Length(); j++)
						c.tgt.cfg.lists[k].push_back(a.Get(j).As<Napi::Number>().Int64Value());
				} else {
					c.tgt.cfg.nums[k] = v.As<Napi::Number>().Int64Value();
				}
			}
		}
	}

	/* Only reached when no worker holds a reference (see DeviceWorker): nothing else touches dev_. If
	 * JavaScript dropped a started device without close(), this stops its threads, which end promptly. */
	~Device() { close_all(); }

      private:
	enum job { JOB_OPEN, JOB_START, JOB_WAIT, JOB_JOIN };
	/* start, wait and join block: they run on libuv's pool. Each holds a reference to the JavaScript
	 * object, so the finalizer cannot free the device under it, and counts itself in busy_, so close()
	 * refuses while one runs. */
	class DeviceWorker : public Napi::AsyncWorker {
	      public:
		DeviceWorker(Napi::Env env, Device *owner, enum job job)
		    : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner), job_(job)
		{
			owner_->Ref();
			owner_->busy_++;
		}
		void Execute() override
		{
			struct device *d = &owner_->dev_;
			switch (job_) {
			case JOB_OPEN:
				err_ = device_open(d);
				break;
			case JOB_START:
				err_ = device_start(d);
				break;
			case JOB_WAIT:
				err_ = device_wait(d);
				break;
			case JOB_JOIN:
				device_join(d);
				err_ = device_errors(d);
				break;
			}
		}
		void OnOK() override
		{
			owner_->busy_--;
			owner_->Unref();
			if (err_.empty()) {
				deferred_.Resolve(Env().Undefined());
				return;
			}
			Napi::Error e = Napi::Error::New(Env(), err_);
			/* The CLI's exit status tells a backend that failed (no NBD server there) from a kernel refusal. */
			if (job_ == JOB_OPEN && owner_->dev_.target_failed)
				e.Set("kind", Napi::String::New(Env(), "backend"));
			deferred_.Reject(e.Value());
		}
		Napi::Value Run()
		{
			Napi::Promise p = deferred_.Promise();
			Queue();
			return p;
		}

	      private:
		Napi::Promise::Deferred deferred_;
		Device *owner_;
		enum job job_;
		std::string err_;
	};

	Napi::Value Open(const Napi::CallbackInfo &info)
	{
		return once(info, opened_, "opened", JOB_OPEN);
	}
	Napi::Value Start(const Napi::CallbackInfo &info)
	{
		if (!opened_) {
			Napi::Error::New(info.Env(), "device start() before open()").ThrowAsJavaScriptException();
			return info.Env().Undefined();
		}
		return once(info, started_, "started", JOB_START);
	}
	Napi::Value once(const Napi::CallbackInfo &info, bool &done, const char *what, enum job job)
	{
		if (done) {
			Napi::Error::New(info.Env(), std::string("device already ") + what).ThrowAsJavaScriptException();
			return info.Env().Undefined();
		}
		done = true;
		return (new DeviceWorker(info.Env(), this, job))->Run();
	}
	/* Resolves when every queue has ended; rejects as soon as one fails. */
	Napi::Value Wait(const Napi::CallbackInfo &info)
	{
		return (new DeviceWorker(info.Env(), this, JOB_WAIT))->Run();
	}
	Napi::Value Join(const Napi::CallbackInfo &info)
	{
		return (new DeviceWorker(info.Env(), this, JOB_JOIN))->Run();
	}
	Napi::Value Drain(const Napi::CallbackInfo &info)
	{
		device_drain(&dev_);
		return info.Env().Undefined();
	}
	/* The target's live state (JSON text), or "" if it has none or the device is not serving. */
	Napi::Value Status(const Napi::CallbackInfo &info)
	{
		const struct target &t = dev_.ctx.tgt;
		bool serving = dev_.target_ready && t.ops->status;
		return Napi::String::New(info.Env(), serving ? t.ops->status(&t) : "");
	}
	/* The queues' counters, summed; never blocks and takes no lock the queues take. */
	Napi::Value Stats(const Napi::CallbackInfo &info)
	{
		uint64_t sum[6] = {};
		for (auto &q : dev_.queues) {
			const struct queue_stats &st = q->stats;
			const std::atomic<uint64_t> *c[6] = {&st.requests, &st.leased, &st.copied, &st.errors, &st.retries, &st.short_transfers};
			for (int i = 0; i < 6; i++)
				sum[i] += c[i]->load(std::memory_order_relaxed);
		}
		const char *names[6] = {"requests", "leased", "copied", "errors", "retries", "shortTransfers"};
		Napi::Object o = Napi::Object::New(info.Env());
		for (int i = 0; i < 6; i++)
			o.Set(names[i], Napi::Number::New(info.Env(), (double)sum[i]));
		return o;
	}
	Napi::Value ForceStop(const Napi::CallbackInfo &info)
	{
		device_force_stop(&dev_);
		return info.Env().Undefined();
	}
	/* After join() resolved: joining here would block the event loop otherwise. */
	Napi::Value Close(const Napi::CallbackInfo &info)
	{
		if (busy_ > 0) {
			Napi::Error::New(info.Env(), "device busy: close() while start, wait or join runs").ThrowAsJavaScriptException();
			return info.Env().Undefined();
		}
		close_all();
		return info.Env().Undefined();
	}
	/* The queue threads post to JavaScript until they end: the channel goes after them. */
	void close_all()
	{
		device_close(&dev_);
		if (dev_.ctx.tgt.cfg.js) {
			js_fn_.Release();
			dev_.ctx.tgt.cfg.js = nullptr;
		}
		if (dev_.bufs_kept) {
			/* The kernel may still write into them: never let them be collected. */
			for (Napi::ObjectReference &r : buf_refs_)
				r.SuppressDestruct();
		}
		buf_refs_.clear();
	}
	static void post_to_js(void *ctx, std::vector<uint8_t> &&bytes)
	{
		auto *fn = static_cast<Napi::ThreadSafeFunction *>(ctx);
		auto *batch = new std::vector<uint8_t>(std::move(bytes));
		napi_status st = fn->NonBlockingCall(batch, [](Napi::Env env, Napi::Function cb, std::vector<uint8_t> *b) {
			Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, b->data(), b->size(),
				[](Napi::Env, uint8_t *, std::vector<uint8_t> *v) { delete v; }, b);
			cb.Call({buf});
		});
		if (st != napi_ok)
			delete batch; /* closing: the requests are drained by the engine */
	}
	/* Completions from JavaScript, in one batch: records of q u16, tag u16, gen u32, result i32, file u8,
	 * 3 bytes of padding, file offset u64 (24 bytes). A record its queue cannot take now (the hand-over
	 * queue is full) is moved to the front of the batch for the caller to hand again: dropped, its request
	 * would never end. Returns how many were moved. A record naming no tag of the device is a bug: throws. */
	Napi::Value Complete(const Napi::CallbackInfo &info)
	{
		Napi::Buffer<uint8_t> b = info[0].As<Napi::Buffer<uint8_t>>();
		size_t refused = 0;
		for (size_t off = 0; off + 24 <= b.Length(); off += 24) {
			uint8_t *p = b.Data() + off;
			uint16_t q;
			struct remote_completion c = {};
			memcpy(&q, p, 2);
			memcpy(&c.tag, p + 2, 2);
			memcpy(&c.gen, p + 4, 4);
			memcpy(&c.result, p + 8, 4);
			c.file = p[12];
			memcpy(&c.file_off, p + 16, 8);
			if (q >= dev_.queues.size() || c.tag >= dev_.ctx.depth) {
				Napi::RangeError::New(info.Env(), "complete(): no tag " + std::to_string(c.tag) + " on queue " +
					std::to_string(q)).ThrowAsJavaScriptException();
				return info.Env().Undefined();
			}
			if (queue_complete_remote(dev_.queues[q].get(), c) < 0)
				memmove(b.Data() + 24 * refused++, p, 24);
		}
		return Napi::Number::New(info.Env(), (double)refused);
	}
	/* /dev/ublkcN as the native side opened it (the driver allows one opener): for user copy from
	 * JavaScript's thread pool. Owned here; valid until close(). */
	Napi::Value CharFd(const Napi::CallbackInfo &info)
	{
		return Napi::Number::New(info.Env(), dev_.ctx.ublkc_fd);
	}
	struct device dev_ {};
	Napi::ThreadSafeFunction js_fn_;
	std::vector<Napi::ObjectReference> buf_refs_;
	struct host_channel js_ {};
	bool opened_ = false;
	bool started_ = false;
	unsigned busy_ = 0; /* workers running; JavaScript thread only */
};

Napi::Object Abi(Napi::Env env)
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

Napi::Object InitAddon(Napi::Env env, Napi::Object exports)
{
	pidfd_exports(env, exports);
	exports.Set("getFeatures", Napi::Function::New(env, GetFeatures));
	exports.Set("addDev", Napi::Function::New(env, AddDev));
	exports.Set("delDev", Napi::Function::New(env, DelDev));
	exports.Set("delDevAsync", Napi::Function::New(env, DelDevAsync));
	exports.Set("startDev", Napi::Function::New(env, StartDev));
	exports.Set("stopDev", Napi::Function::New(env, StopDev));
	exports.Set("tryStopDev", Napi::Function::New(env, TryStopDev));
	exports.Set("setParams", Napi::Function::New(env, SetParams));
	exports.Set("getParams", Napi::Function::New(env, GetParams));
	exports.Set("getDevInfo", Napi::Function::New(env, GetDevInfo));
	exports.Set("getDevInfo2", Napi::Function::New(env, GetDevInfo2));
	exports.Set("updateSize", Napi::Function::New(env, UpdateSize));
	exports.Set("startUserRecovery", Napi::Function::New(env, StartUserRecovery));
	exports.Set("endUserRecovery", Napi::Function::New(env, EndUserRecovery));
	exports.Set("Device", Device::Init(env));
	exports.Set("abi", Abi(env));
	return exports;
}

} // namespace

NODE_API_MODULE(ublk_ts, InitAddon)
