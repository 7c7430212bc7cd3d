/*
 * tests/test_sha256.c — common/sha256.c against the FIPS 180-2 / NIST CSRC
 * example vectors ("abc", the 448- and 896-bit messages, a million 'a'),
 * the empty message, and lengths around the padding boundaries (55/56 and
 * 119/120 bytes need one more block; 63/64/65 straddle one).
 */
#include "common/rt.h"
#include "tests/test.h"

#include <stdlib.h>

static void check_hex(const void *data, size_t len, const char *want)
{
    char got[RT_SHA256_HEX_SIZE];
    rt_sha256_hex(data, len, got);
    CHECK_EQ_STR(got, want);
}

static void test_standard_vectors(void)
{
    check_hex("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_hex("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_hex(m448, strlen(m448), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                       "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    check_hex(m896, strlen(m896), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    char *million = malloc(1000000);
    CHECK(million != NULL);
    if (!million)
        return;
    memset(million, 'a', 1000000);
    check_hex(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

static void test_padding_boundaries(void)
{
    static const struct { size_t n; const char *hex; } cases[] = {
        {55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"},
        {56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"},
        {63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"},
        {64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"},
        {65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9"},
        {119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c"},
        {120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98"},
    };
    char buf[128];
    memset(buf, 'x', sizeof buf);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_hex(buf, cases[i].n, cases[i].hex);
}

/* The raw digest and its hex form agree. */
static void test_raw_digest(void)
{
    uint8_t d[32];
    rt_sha256("abc", 3, d);
    CHECK_EQ_INT(d[0], 0xba);
    CHECK_EQ_INT(d[31], 0xad);
}

int main(void)
{
    RUN(test_standard_vectors);
    RUN(test_padding_boundaries);
    RUN(test_raw_digest);
    return TEST_SUMMARY();
}
