/* The module: the control commands, the class Device, the ABI table, each native target's option keys, the
 * pidfd helpers and the targets' own N-API functions. */
#include <napi.h>

#include <vector>

#include "exports.h"
#include "target.h"

/* { name: [keys its config is read by] } for every native target: a host test holds each index.ts to it. */
static Napi::Object target_options(Napi::Env env)
{
	Napi::Object out = Napi::Object::New(env);
	for (const struct target_ops *ops : target_all()) {
		Napi::Array keys = Napi::Array::New(env);
		for (const char *const *k = ops->options; k && *k; k++)
			keys.Set(keys.Length(), Napi::String::New(env, *k));
		out.Set(ops->name, keys);
	}
	return out;
}

static std::vector<napi_part> &part_registry()
{
	static std::vector<napi_part> parts;
	return parts;
}

void napi_part_register(napi_part add)
{
	part_registry().push_back(add);
}

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports)
{
	pidfd_exports(env, exports);
	lock_exports(env, exports);
	control_exports(env, exports);
	exports.Set("Device", device_class(env));
	exports.Set("abi", abi_table(env));
	exports.Set("targetOptions", target_options(env));
	for (napi_part add : part_registry())
		add(env, exports);
	return exports;
}

NODE_API_MODULE(ublk_ts, InitAddon)
