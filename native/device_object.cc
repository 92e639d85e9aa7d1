/*
 * The N-API class Device: the data plane of one device, owned by the daemon process. Its blocking steps
 * (open, start, wait, join) run on libuv's thread pool and resolve a Promise.
 */
#include <napi.h>
#include <string.h>

#include "device.h"
#include "exports.h"
#include "js_args.h"

namespace {

class Device : public Napi::ObjectWrap<Device> {
      public:
	static Napi::Function Init(Napi::Env env)
	{
		return DefineClass(env, "Device",
				   {InstanceMethod("open", &Device::Open), InstanceMethod("start", &Device::Start),
				    InstanceMethod("wait", &Device::Wait),
				    InstanceMethod("drain", &Device::Drain), InstanceMethod("handover", &Device::Handover),
				    InstanceMethod("prepareHandover", &Device::PrepareHandover),
				    InstanceMethod("join", &Device::Join),
				    InstanceMethod("forceStop", &Device::ForceStop), InstanceMethod("close", &Device::Close),
				    InstanceMethod("status", &Device::Status), InstanceMethod("stats", &Device::Stats),
				    InstanceMethod("charFd", &Device::CharFd),
				    InstanceMethod("command", &Device::Command)});
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
		if (o.Has("handler") && o.Get("handler").IsFunction()) {
			/* The target's channel to JavaScript (cfg.js): bytes from the queue threads, as Buffers. */
			js_fn_ = Napi::ThreadSafeFunction::New(env, o.Get("handler").As<Napi::Function>(), "ublk-ts target handler", 0, 1);
			js_ = {post_to_js, &js_fn_};
			c.tgt.cfg.js = &js_;
		}
		if (o.Has("buffers") && o.Get("buffers").IsArray()) {
			/* The copy buffers, JavaScript's (cfg.bufs): referenced here so that no collection frees one
			 * while a queue thread copies into it. */
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

	struct device *data_plane() { return &dev_; }

	/* Only reached when no worker holds a reference (see DeviceWorker): nothing else touches dev_. If
	 * JavaScript dropped a started device without close(), this stops its threads, which end promptly. */
	~Device() { close_all(); }

      private:
	enum job { JOB_OPEN, JOB_START, JOB_WAIT, JOB_JOIN, JOB_COMMAND };
	/* start, wait and join block: they run on libuv's pool. Each holds a reference to the JavaScript
	 * object, so the finalizer cannot free the device under it, and counts itself in busy_, so close()
	 * refuses while one runs. */
	class DeviceWorker : public Napi::AsyncWorker {
	      public:
		DeviceWorker(Napi::Env env, Device *owner, enum job job, std::string arg = "")
		    : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner), job_(job),
		      arg_(std::move(arg))
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
			case JOB_COMMAND:
				out_ = d->ctx.tgt.ops->command(&d->ctx.tgt, arg_);
				break;
			}
		}
		void OnOK() override
		{
			owner_->busy_--;
			owner_->Unref();
			if (err_.empty()) {
				deferred_.Resolve(job_ == JOB_COMMAND ? Napi::String::New(Env(), out_) : Env().Undefined());
				return;
			}
			Napi::Error e = Napi::Error::New(Env(), err_);
			/* The CLI's exit status tells a backend that failed (no server at the address) from a kernel refusal. */
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
		std::string arg_, out_;
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
	Napi::Value Handover(const Napi::CallbackInfo &info)
	{
		device_handover(&dev_);
		return info.Env().Undefined();
	}
	Napi::Value PrepareHandover(const Napi::CallbackInfo &info)
	{
		device_prepare_handover(&dev_);
		return info.Env().Undefined();
	}
	/* The target's live state (JSON text), or "" if it has none or the device is not serving. */
	Napi::Value Status(const Napi::CallbackInfo &info)
	{
		const struct target &t = dev_.ctx.tgt;
		bool serving = dev_.target_ready && t.ops->status;
		return Napi::String::New(info.Env(), serving ? t.ops->status(&t) : "");
	}
	/* An operator's command to the target (its reply, JSON text); only while it serves. */
	Napi::Value Command(const Napi::CallbackInfo &info)
	{
		const struct target &t = dev_.ctx.tgt;
		if (!dev_.target_ready || !t.ops->command || !info[0].IsString()) {
			Napi::Error::New(info.Env(), std::string("target ") + t.ops->name + " takes no commands now").ThrowAsJavaScriptException();
			return info.Env().Undefined();
		}
		return (new DeviceWorker(info.Env(), this, JOB_COMMAND, info[0].As<Napi::String>().Utf8Value()))->Run();
	}
	/* The queues' counters, summed; never blocks and takes no lock the queues take. */
	Napi::Value Stats(const Napi::CallbackInfo &info)
	{
		uint64_t sum[6] = {};
		for (auto &q : dev_.queues) {
			const struct queue_stats &st = *q->stats;
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

} // namespace

/* The constructor, per environment: device_of tells a Device from any other object by it. */
Napi::Function device_class(Napi::Env env)
{
	Napi::Function ctor = Device::Init(env);
	env.SetInstanceData(new Napi::FunctionReference(Napi::Persistent(ctor)));
	return ctor;
}

struct device *device_of(const Napi::Value &v)
{
	Napi::FunctionReference *ctor = v.Env().GetInstanceData<Napi::FunctionReference>();
	if (!ctor || !v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctor->Value()))
		throw Napi::TypeError::New(v.Env(), "not a Device");
	return Device::Unwrap(v.As<Napi::Object>())->data_plane();
}
