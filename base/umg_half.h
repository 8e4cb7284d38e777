/* umg_half.h - IEEE 754 half precision <-> single, the one definition used
 * everywhere (the encoder's F16 weights and kernels, the engine's stored
 * patch tokens).  Round to nearest even; NaN stays NaN (quiet), infinities
 * and overflow give infinity, subnormals are exact both ways. */
#ifndef UMG_HALF_H
#define UMG_HALF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float umg_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float f = (float)mant * 0x1p-24f; /* zero or subnormal: exact */
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 112) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t umg_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, nan */
        return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
    if (a >= 0x477ff000u) /* rounds beyond 65504 */
        return sign | 0x7c00;
    if (a < 0x38800000u) { /* below 2^-14: subnormal half (or zero) */
        float af;
        memcpy(&af, &a, sizeof af);
        return sign | (uint16_t)nearbyintf(af * 0x1p24f);
    }
    uint32_t h = ((a >> 23) - 112) << 10 | (a & 0x7fffff) >> 13, rest = a & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

#endif
