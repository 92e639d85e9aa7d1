/*
 * The addon's functions for the bridge's JavaScript half (src/bridge.ts), as `bridge` in the module: the
 * layout of the records the two halves exchange (records.h), and complete(), the way back for completions.
 */
#include <napi.h>
#include <stddef.h>
#include <string.h>

#include "../../native/device.h"
#include "../../native/exports.h"
#include "records.h"

/* Every size and offset of records.h, so that src/bridge.ts writes none of its own. */
static Napi::Object layout(Napi::Env env)
{
	auto record = [env](size_t bytes, std::initializer_list<std::pair<const char *, size_t>> fields) {
		Napi::Object o = Napi::Object::New(env);
		o.Set("bytes", Napi::Number::New(env, (double)bytes));
		for (const auto &f : fields)
			o.Set(f.first, Napi::Number::New(env, (double)f.second));
		return o;
	};
	Napi::Object desc = record(sizeof(struct bridge_desc),
				   {{"q", offsetof(struct bridge_desc, q)},
				    {"tag", offsetof(struct bridge_desc, tag)},
				    {"gen", offsetof(struct bridge_desc, gen)},
				    {"opFlags", offsetof(struct bridge_desc, op_flags)},
				    {"len", offsetof(struct bridge_desc, len)},
				    {"offset", offsetof(struct bridge_desc, offset)}});
	desc.Set("fBytes", Napi::Number::New(env, (double)BRIDGE_F_BYTES));
	Napi::Object out = Napi::Object::New(env);
	out.Set("desc", desc);
	out.Set("done", record(sizeof(struct bridge_done),
			       {{"q", offsetof(struct bridge_done, q)},
				{"tag", offsetof(struct bridge_done, tag)},
				{"gen", offsetof(struct bridge_done, gen)},
				{"result", offsetof(struct bridge_done, result)},
				{"file", offsetof(struct bridge_done, file)},
				{"fileOffset", offsetof(struct bridge_done, file_off)}}));
	return out;
}

/* complete(device, batch): a batch of bridge_done records. A record its queue cannot take now (the
 * hand-over queue is full) is moved to the front of the batch for the caller to hand again: dropped, its
 * request would never end. Returns how many were moved. A record naming no tag of the device is a bug:
 * throws. */
static Napi::Value complete(const Napi::CallbackInfo &info)
{
	struct device *d = device_of(info[0]);
	Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
	const size_t size = sizeof(struct bridge_done);
	size_t refused = 0;
	for (size_t off = 0; off + size <= b.Length(); off += size) {
		uint8_t *p = b.Data() + off;
		struct bridge_done r;
		memcpy(&r, p, size);
		if (r.q >= d->queues.size() || r.tag >= d->ctx.depth)
			throw Napi::RangeError::New(info.Env(), "complete(): no tag " + std::to_string(r.tag) + " on queue " + std::to_string(r.q));
		struct remote_completion c = {r.tag, r.gen, r.result, {}};
		c.arg[BRIDGE_ARG_FILE] = r.file;
		c.arg[BRIDGE_ARG_FILE_OFF] = r.file_off;
		if (queue_complete_remote(d->queues[r.q].get(), c) < 0)
			memmove(b.Data() + size * refused++, p, size);
	}
	return Napi::Number::New(info.Env(), (double)refused);
}

static void bridge_exports(Napi::Env env, Napi::Object exports)
{
	Napi::Object o = Napi::Object::New(env);
	o.Set("layout", layout(env));
	o.Set("complete", Napi::Function::New(env, complete, "complete"));
	exports.Set("bridge", o);
}
UBLK_NAPI_PART(bridge_exports)
