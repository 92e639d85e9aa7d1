/* The module: the control commands, the class Device, the ABI table and the pidfd helpers. */
#include <napi.h>

#include "exports.h"

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports)
{
	pidfd_exports(env, exports);
	control_exports(env, exports);
	exports.Set("Device", device_class(env));
	exports.Set("abi", abi_table(env));
	return exports;
}

NODE_API_MODULE(ublk_ts, InitAddon)
