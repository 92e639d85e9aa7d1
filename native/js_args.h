/* Reading numbers from JavaScript arguments: a BigInt or a Number; an absent key takes its default. */
#pragma once
#include <napi.h>
#include <stdint.h>

static inline uint64_t to_u64(const Napi::Value &v)
{
	if (v.IsBigInt()) {
		bool lossless;
		return v.As<Napi::BigInt>().Uint64Value(&lossless);
	}
	return (uint64_t)v.As<Napi::Number>().Int64Value();
}

static inline uint64_t get_u64(const Napi::Object &o, const char *key, uint64_t dflt)
{
	return o.Has(key) && !o.Get(key).IsUndefined() ? to_u64(o.Get(key)) : dflt;
}
