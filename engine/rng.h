/*
 * engine/rng.h — (internal to engine/) deterministic random numbers:
 * splitmix64 for seeding and a counter-based hash so that any element of a
 * dropout mask can be regenerated from (seed, stream, index) without state.
 */
#ifndef RT_ENGINE_RNG_H
#define RT_ENGINE_RNG_H

#include <stdint.h>

typedef struct rng { uint64_t state; } rng;

static inline uint64_t rng_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(rng *r)
{
    r->state += 0x9e3779b97f4a7c15ULL;
    return rng_mix(r->state);
}

/* Uniform in [0, 1) with 24 random bits (exact in float). */
static inline float rng_uniform(rng *r)
{
    return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform in [0, 1) from a counter: the same (key, index) gives the same value. */
static inline float rng_hash_uniform(uint64_t key, uint64_t index)
{
    return (float)(rng_mix(key ^ rng_mix(index + 0x9e3779b97f4a7c15ULL)) >> 40) *
           (1.0f / 16777216.0f);
}

/* Uniform integer in [0, n). */
static inline uint64_t rng_below(rng *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0;
}

#endif
