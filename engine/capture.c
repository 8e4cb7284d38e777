/* capture.c - capture metadata: ISO 8601 times, the date, camera and place
 * filters (capture.h). */
#include "capture.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "umg_error.h"
#include "umg_util.h"

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar, and
 * back: the usual era arithmetic (400-year cycles of 146,097 days, years
 * counted from March so that the leap day comes last). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static int days_in_month(int y, int m)
{
    static const int n[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : n[m - 1];
}

/* n digits at s[*at] (within len) into *v. */
static int digits(const char *s, size_t len, size_t *at, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++, (*at)++) {
        if (*at >= len || !isdigit((unsigned char)s[*at])) return 0;
        x = x * 10 + (s[*at] - '0');
    }
    *v = x;
    return 1;
}

static int sep(const char *s, size_t len, size_t *at, char c)
{
    if (*at >= len || s[*at] != c) return 0;
    (*at)++;
    return 1;
}

int eng_time_parse(const char *s, size_t len, eng_time *out)
{
    memset(out, 0, sizeof *out);
    size_t at = 0;
    int Y, M, D, h = 0, mi = 0, sec = 0;
    int ok = digits(s, len, &at, 4, &Y) && sep(s, len, &at, '-') && digits(s, len, &at, 2, &M) &&
             sep(s, len, &at, '-') && digits(s, len, &at, 2, &D);
    if (ok && at < len && (s[at] == 'T' || s[at] == ' ')) {
        at++;
        ok = digits(s, len, &at, 2, &h) && sep(s, len, &at, ':') && digits(s, len, &at, 2, &mi);
        if (ok && at < len && s[at] == ':') {
            at++;
            ok = digits(s, len, &at, 2, &sec);
            if (ok && at < len && (s[at] == '.' || s[at] == ',')) { /* fractions: ignored */
                at++;
                ok = at < len && isdigit((unsigned char)s[at]);
                while (at < len && isdigit((unsigned char)s[at])) at++;
            }
        }
        if (ok && at < len && s[at] == 'Z') {
            at++;
            out->has_offset = 1;
        } else if (ok && at < len && (s[at] == '+' || s[at] == '-')) {
            int sign = s[at++] == '-' ? -1 : 1, oh = 0, om = 0;
            ok = digits(s, len, &at, 2, &oh) && sep(s, len, &at, ':') && digits(s, len, &at, 2, &om) &&
                 oh * 60 + om <= DB_MAX_OFFSET_MINUTES && om < 60;
            out->has_offset = 1;
            out->offset_minutes = sign * (oh * 60 + om);
        }
    }
    ok = ok && at == len && Y >= 1 && M >= 1 && M <= 12 && D >= 1 && D <= days_in_month(Y, M) && h <= 23 &&
         mi <= 59 && sec <= 59;
    if (!ok)
        return umg_err_set(UMG_EINVAL, "'%.*s' is not an ISO 8601 date or date-time "
                                       "(2019-07-14, 2019-07-14T18:30, 2019-07-14T18:30:00+02:00)",
                           (int)(len < 64 ? len : 64), s);
    out->clock = days_from_civil(Y, M, D) * 86400 + h * 3600 + mi * 60 + sec;
    return 0;
}

size_t eng_taken_format(const db_capture *c, char *buf, size_t cap)
{
    if (!c->has_taken || cap < 32) {
        if (cap) buf[0] = 0;
        return 0;
    }
    int64_t days = c->taken >= 0 ? c->taken / 86400 : -((-c->taken + 86399) / 86400);
    int64_t rest = c->taken - days * 86400;
    int y, m, d;
    civil_from_days(days, &y, &m, &d);
    int n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d", y, m, d, (int)(rest / 3600), (int)(rest / 60 % 60),
                     (int)(rest % 60));
    if (c->has_offset) {
        int o = c->offset_minutes < 0 ? -c->offset_minutes : c->offset_minutes;
        n += snprintf(buf + n, cap - (size_t)n, "%c%02d:%02d", c->offset_minutes < 0 ? '-' : '+', o / 60, o % 60);
    }
    return (size_t)n;
}

void eng_capture_from_meta(const enc_image_meta *m, db_capture *out)
{
    memset(out, 0, sizeof *out);
    eng_time t;
    if (m->taken_at_known && !eng_time_parse(m->taken_at, strlen(m->taken_at), &t) && t.clock >= DB_MIN_TAKEN &&
        t.clock <= DB_MAX_TAKEN) {
        out->has_taken = 1;
        out->taken = t.clock;
        out->has_offset = t.has_offset;
        out->offset_minutes = t.offset_minutes;
    }
    umg_err_clear(); /* an unreadable time is unknown, not an error */
    if (m->camera_known) {
        size_t n = strnlen(m->camera, sizeof m->camera);
        if (n > DB_MAX_CAMERA) n = DB_MAX_CAMERA;
        n = umg_utf8_prefix(m->camera, n); /* a name cut inside a character, or not UTF-8: its valid start */
        n = strnlen(m->camera, n);
        memcpy(out->camera, m->camera, n);
        out->camera[n] = 0;
    }
    if (m->gps_known && m->lat >= -90 && m->lat <= 90 && m->lon >= -180 && m->lon <= 180) {
        out->has_gps = 1;
        out->lat = m->lat;
        out->lon = m->lon;
    }
}

int eng_taken_passes(const db_capture *c, const eng_time *bound, int after)
{
    if (!c->has_taken) return 0;
    int64_t photo = c->taken, b = bound->clock;
    if (bound->has_offset) { /* instants: both in UTC */
        b -= (int64_t)bound->offset_minutes * 60;
        if (c->has_offset) photo -= (int64_t)c->offset_minutes * 60;
    }
    return after ? photo >= b : photo < b;
}

double eng_km_between(double lat1, double lon1, double lat2, double lon2)
{
    const double r = 6371.0088, rad = M_PI / 180;
    double dlat = (lat2 - lat1) * rad, dlon = (lon2 - lon1) * rad;
    double a = sin(dlat / 2) * sin(dlat / 2) + cos(lat1 * rad) * cos(lat2 * rad) * sin(dlon / 2) * sin(dlon / 2);
    if (a > 1) a = 1;
    return 2 * r * asin(sqrt(a));
}

int eng_camera_matches(const char *camera, const char *needle, size_t len)
{
    size_t n = strlen(camera);
    if (len > n) return 0;
    for (size_t i = 0; i + len <= n; i++) {
        size_t j = 0;
        while (j < len && tolower((unsigned char)camera[i + j]) == tolower((unsigned char)needle[j])) j++;
        if (j == len) return 1;
    }
    return 0;
}
