/* What each file of the N-API surface adds to the module (addon.cc puts them together). */
#pragma once
#include <napi.h>

/* control.cc: the control commands, each a Promise resolved from libuv's pool. */
void control_exports(Napi::Env env, Napi::Object exports);
/* device_object.cc: the class Device, the data plane of one device. */
Napi::Function device_class(Napi::Env env);
struct device;
/* device_object.cc: the data plane behind a JavaScript Device, for a target's own N-API functions; throws a
 * TypeError for any other value. */
struct device *device_of(const Napi::Value &v);
/* abi_table.cc: the kernel's command numbers, flags and struct sizes this build was compiled against. */
Napi::Object abi_table(Napi::Env env);
/* pidfd.cc: process handles for signalling. */
void pidfd_exports(Napi::Env env, Napi::Object exports);
/* lock.cc: an advisory lock that ends with its process. */
void lock_exports(Napi::Env env, Napi::Object exports);

/* A target's own N-API functions (targets/<name>/): each registers what it adds to the module at load
 * time, as a target registers its ops, and addon.cc adds them all. */
using napi_part = void (*)(Napi::Env env, Napi::Object exports);
void napi_part_register(napi_part add);
#define UBLK_NAPI_PART(add)                                        \
	__attribute__((constructor)) static void reg_napi_##add(void) \
	{                                                          \
		napi_part_register(add);                           \
	}
