/*
 * api/multipart.c — feeds a multipart/form-data body to libmicrohttpd's
 * post-processor, piece by piece. The one addition: the last two bytes seen
 * are held back, and a final CRLF after the closing boundary (an epilogue,
 * which RFC 2046 allows and OpenAI's Node SDK sends) is dropped, because
 * libmicrohttpd 0.9.75 rejects a body that has one.
 */
#include "api/api_internal.h"

#include <string.h>

bool api_multipart_open(api_multipart *mp, struct MHD_Connection *conn, MHD_PostDataIterator iter,
                        void *cls)
{
    memset(mp, 0, sizeof *mp);
    mp->pp = MHD_create_post_processor(conn, 64 * 1024, iter, cls);
    return mp->pp != NULL;
}

bool api_multipart_feed(api_multipart *mp, const char *data, size_t len)
{
    if (!mp->pp)
        return false;
    if (len >= 2) { /* release what was held, hold this piece's last two bytes */
        if (mp->n_held && MHD_post_process(mp->pp, mp->held, mp->n_held) != MHD_YES)
            return false;
        mp->n_held = 0;
        if (MHD_post_process(mp->pp, data, len - 2) != MHD_YES)
            return false;
        memcpy(mp->held, data + len - 2, 2);
        mp->n_held = 2;
        return true;
    }
    for (size_t i = 0; i < len; i++) { /* a 1-byte piece: shift it through the holder */
        if (mp->n_held == 2) {
            if (MHD_post_process(mp->pp, mp->held, 1) != MHD_YES)
                return false;
            mp->held[0] = mp->held[1];
            mp->n_held = 1;
        }
        mp->held[mp->n_held++] = data[i];
    }
    return true;
}

bool api_multipart_finish(api_multipart *mp)
{
    if (!mp->pp)
        return false;
    bool ok = true;
    bool epilogue = mp->n_held == 2 && mp->held[0] == '\r' && mp->held[1] == '\n';
    if (mp->n_held && !epilogue)
        ok = MHD_post_process(mp->pp, mp->held, mp->n_held) == MHD_YES;
    ok = MHD_destroy_post_processor(mp->pp) == MHD_YES && ok;
    mp->pp = NULL;
    return ok;
}

void api_multipart_close(api_multipart *mp)
{
    if (mp->pp)
        MHD_destroy_post_processor(mp->pp);
    mp->pp = NULL;
}
