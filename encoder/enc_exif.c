/* enc_exif.c - the EXIF fields umgdb uses, read with libexif: Orientation, and the
 * capture metadata (DateTimeOriginal + OffsetTimeOriginal, Make/Model, GPS).
 *
 * EXIF is written by every camera and app differently and is often damaged;
 * nothing read here may make a photo undecodable, so every field is validated on
 * its own and an invalid one is simply unknown. */
#include "enc_decode.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libexif/exif-data.h>

/* libexif takes an unsigned length; a TIFF file is read whole (its IFDs may sit
 * anywhere, libtiff writes them after the pixels), and files are at most 1 GiB
 * (enc_image_load). */
#define ENC_EXIF_MAX_BYTES (1u << 30)

/* An ASCII entry as a trimmed C string (trailing NULs and spaces removed). */
static int entry_string(ExifContent *ifd, ExifTag tag, char *buf, size_t cap)
{
    ExifEntry *e = ifd ? exif_content_get_entry(ifd, tag) : NULL;
    if (!e || !e->data || e->size == 0 || (e->format != EXIF_FORMAT_ASCII && e->format != EXIF_FORMAT_UNDEFINED))
        return 0;
    size_t n = e->size < cap - 1 ? e->size : cap - 1;
    memcpy(buf, e->data, n);
    buf[n] = 0;
    n = strlen(buf); /* stop at the first NUL */
    while (n && (buf[n - 1] == ' ' || (unsigned char)buf[n - 1] < 0x20))
        buf[--n] = 0;
    size_t lead = 0;
    while (buf[lead] == ' ')
        lead++;
    memmove(buf, buf + lead, n - lead + 1);
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            return 0; /* control characters: garbage, not a name or a date */
    return buf[0] != 0;
}

/* n decimal digits at s into *v. */
static int digits(const char *s, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return 0;
        x = x * 10 + (s[i] - '0');
    }
    *v = x;
    return 1;
}

/* "YYYY:MM:DD HH:MM:SS" (EXIF's only form; "-" accepted as date separator, as
 * some writers use) -> "YYYY-MM-DDTHH:MM:SS". */
static int parse_datetime(const char *s, char out[32])
{
    int Y, M, D, h, m, sec;
    if (strlen(s) < 19 || !digits(s, 4, &Y) || !digits(s + 5, 2, &M) || !digits(s + 8, 2, &D) ||
        !digits(s + 11, 2, &h) || !digits(s + 14, 2, &m) || !digits(s + 17, 2, &sec))
        return 0;
    if ((s[4] != ':' && s[4] != '-') || s[7] != s[4] || (s[10] != ' ' && s[10] != 'T') || s[13] != ':' ||
        s[16] != ':')
        return 0;
    if (Y < 1 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return 0; /* "0000:00:00 00:00:00" is how cameras say "unknown" */
    snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d", Y, M, D, h, m, sec);
    return 1;
}

/* "+HH:MM" / "-HH:MM" -> minutes east of UTC. */
static int parse_offset(const char *s, int *minutes)
{
    int h, m;
    if (strlen(s) != 6 || (s[0] != '+' && s[0] != '-') || !digits(s + 1, 2, &h) || s[3] != ':' ||
        !digits(s + 4, 2, &m) || h > 14 || m > 59)
        return 0;
    *minutes = (s[0] == '-' ? -1 : 1) * (h * 60 + m);
    return 1;
}

/* GPSLatitude/GPSLongitude (3 rationals: degrees, minutes, seconds) with their
 * N/S, E/W reference -> signed degrees. */
static int gps_coord(ExifData *ed, ExifTag tag, ExifTag ref_tag, double limit, double *out)
{
    ExifContent *gps = ed->ifd[EXIF_IFD_GPS];
    ExifEntry *e = gps ? exif_content_get_entry(gps, tag) : NULL;
    char ref[8];
    if (!e || e->format != EXIF_FORMAT_RATIONAL || e->components < 3 || !e->data || e->size < 24 ||
        !entry_string(gps, ref_tag, ref, sizeof ref))
        return 0;
    ExifByteOrder order = exif_data_get_byte_order(ed);
    double v = 0, scale = 1;
    for (int i = 0; i < 3; i++, scale *= 60) {
        ExifRational r = exif_get_rational(e->data + 8 * i, order);
        if (r.denominator == 0)
            return 0;
        v += (double)r.numerator / r.denominator / scale;
    }
    char c = (char)toupper((unsigned char)ref[0]);
    if (c == 'S' || c == 'W')
        v = -v;
    else if (c != 'N' && c != 'E')
        return 0;
    if (!(v >= -limit && v <= limit))
        return 0;
    *out = v;
    return 1;
}

static void read_camera(ExifData *ed, enc_image_meta *meta)
{
    char make[40], model[86]; /* "make model" fits camera[128] */
    int has_make = entry_string(ed->ifd[EXIF_IFD_0], EXIF_TAG_MAKE, make, sizeof make);
    int has_model = entry_string(ed->ifd[EXIF_IFD_0], EXIF_TAG_MODEL, model, sizeof model);
    if (has_make && has_model && strncasecmp(model, make, strlen(make)) != 0)
        snprintf(meta->camera, sizeof meta->camera, "%s %s", make, model);
    else if (has_model || has_make)
        snprintf(meta->camera, sizeof meta->camera, "%s", has_model ? model : make);
    else
        return;
    meta->camera_known = 1;
}

void enc_exif_read(const uint8_t *data, size_t len, int *orientation, enc_image_meta *meta)
{
    if (orientation)
        *orientation = 1;
    if (!data || len < 8)
        return;
    /* libexif wants the APP1 payload form: "Exif\0\0" then the TIFF structure. */
    uint8_t *copy = NULL;
    if (len < 6 || memcmp(data, "Exif\0\0", 6) != 0) {
        if (memcmp(data, "II*\0", 4) != 0 && memcmp(data, "MM\0*", 4) != 0)
            return;
        if (len > ENC_EXIF_MAX_BYTES)
            len = ENC_EXIF_MAX_BYTES;
        copy = malloc(len + 6);
        if (!copy)
            return;
        memcpy(copy, "Exif\0\0", 6);
        memcpy(copy + 6, data, len);
        data = copy;
        len += 6;
    } else if (len > ENC_EXIF_MAX_BYTES) {
        len = ENC_EXIF_MAX_BYTES;
    }
    ExifData *ed = exif_data_new();
    if (!ed) {
        free(copy);
        return;
    }
    /* FOLLOW_SPECIFICATION would "fix" the data by inventing mandatory tags. */
    exif_data_unset_option(ed, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
    exif_data_load_data(ed, data, (unsigned)len);
    free(copy);

    ExifEntry *e = ed->ifd[EXIF_IFD_0] ? exif_content_get_entry(ed->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION) : NULL;
    if (orientation && e && e->format == EXIF_FORMAT_SHORT && e->components >= 1 && e->data && e->size >= 2) {
        int v = exif_get_short(e->data, exif_data_get_byte_order(ed));
        if (v >= 1 && v <= 8)
            *orientation = v;
    }
    if (meta) {
        char s[64];
        if (entry_string(ed->ifd[EXIF_IFD_EXIF], EXIF_TAG_DATE_TIME_ORIGINAL, s, sizeof s) &&
            parse_datetime(s, meta->taken_at)) {
            meta->taken_at_known = 1;
            int off;
            if (entry_string(ed->ifd[EXIF_IFD_EXIF], EXIF_TAG_OFFSET_TIME_ORIGINAL, s, sizeof s) &&
                parse_offset(s, &off)) {
                meta->offset_known = 1;
                meta->offset_minutes = off;
                size_t n = strlen(meta->taken_at);
                snprintf(meta->taken_at + n, sizeof meta->taken_at - n, "%c%02d:%02d", off < 0 ? '-' : '+',
                         abs(off) / 60, abs(off) % 60);
            }
        }
        read_camera(ed, meta);
        double lat, lon;
        if (gps_coord(ed, EXIF_TAG_GPS_LATITUDE, EXIF_TAG_GPS_LATITUDE_REF, 90, &lat) &&
            gps_coord(ed, EXIF_TAG_GPS_LONGITUDE, EXIF_TAG_GPS_LONGITUDE_REF, 180, &lon)) {
            meta->gps_known = 1;
            meta->lat = lat;
            meta->lon = lon;
        }
    }
    exif_data_unref(ed);
}
