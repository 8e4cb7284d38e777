/* enc_exif.c - the EXIF fields umgdb uses, read with libexif: Orientation, and the
 * capture metadata (DateTimeOriginal + OffsetTimeOriginal, Make/Model, GPS).
 *
 * EXIF is written by every camera and app differently and is often damaged;
 * nothing read here may make a photo undecodable, so every field is validated on
 * its own and an invalid one is simply unknown. */
#include "enc_decode.h"
#include "umg_error.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libexif/exif-data.h>

/* EXIF blocks longer than a JPEG segment are legitimate in HEIF/WebP, but nothing
 * we read lies beyond this (a TIFF's own IFDs are read through libtiff). */
#define ENC_EXIF_MAX_BYTES (4u << 20)

/* Trim buf in place (spaces and control characters at the ends); 0 when empty or
 * when control characters remain inside (garbage, not a name or a date). */
static int clean_string(char *buf)
{
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == ' ' || (unsigned char)buf[n - 1] < 0x20))
        buf[--n] = 0;
    size_t lead = 0;
    while (buf[lead] == ' ')
        lead++;
    memmove(buf, buf + lead, n - lead + 1);
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            return 0;
    return buf[0] != 0;
}

/* s (may be NULL) copied into buf and cleaned. */
static int copy_clean(const char *s, char *buf, size_t cap)
{
    if (!s)
        return 0;
    snprintf(buf, cap, "%s", s);
    return clean_string(buf);
}

/* An ASCII entry as a cleaned C string. */
static int entry_string(ExifContent *ifd, ExifTag tag, char *buf, size_t cap)
{
    ExifEntry *e = ifd ? exif_content_get_entry(ifd, tag) : NULL;
    if (!e || !e->data || e->size == 0 || (e->format != EXIF_FORMAT_ASCII && e->format != EXIF_FORMAT_UNDEFINED))
        return 0;
    size_t n = e->size < cap - 1 ? e->size : cap - 1;
    memcpy(buf, e->data, n);
    buf[n] = 0; /* then it stops at the first NUL */
    return clean_string(buf);
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

/* GPSLatitude/GPSLongitude: 3 rationals (degrees, minutes, seconds) as doubles
 * (NaN for a zero denominator), and the N/S, E/W reference string. */
static int gps_entry(ExifData *ed, ExifTag tag, ExifTag ref_tag, double dms[3], char *ref, size_t ref_cap)
{
    ExifContent *gps = ed->ifd[EXIF_IFD_GPS];
    ExifEntry *e = gps ? exif_content_get_entry(gps, tag) : NULL;
    if (!e || e->format != EXIF_FORMAT_RATIONAL || e->components < 3 || !e->data || e->size < 24 ||
        !entry_string(gps, ref_tag, ref, ref_cap))
        return 0;
    ExifByteOrder order = exif_data_get_byte_order(ed);
    for (int i = 0; i < 3; i++) {
        ExifRational r = exif_get_rational(e->data + 8 * i, order);
        dms[i] = r.denominator ? (double)r.numerator / r.denominator : NAN;
    }
    return 1;
}

/* Degrees, minutes, seconds and a reference ("N"/"S", "E"/"W") to signed degrees
 * within +-limit. */
static int signed_degrees(const double dms[3], const char *ref, double limit, double *out)
{
    double v = dms[0] + dms[1] / 60 + dms[2] / 3600;
    char c = (char)toupper((unsigned char)ref[0]);
    if (c == 'S' || c == 'W')
        v = -v;
    else if (c != 'N' && c != 'E')
        return 0;
    if (!(v >= -limit && v <= limit))
        return 0; /* also NaN */
    *out = v;
    return 1;
}

void enc_meta_set_gps(enc_image_meta *meta, const double lat_dms[3], const char *lat_ref, const double lon_dms[3],
                      const char *lon_ref)
{
    char la_ref[8], lo_ref[8];
    double lat, lon;
    if (copy_clean(lat_ref, la_ref, sizeof la_ref) && copy_clean(lon_ref, lo_ref, sizeof lo_ref) &&
        signed_degrees(lat_dms, la_ref, 90, &lat) && signed_degrees(lon_dms, lo_ref, 180, &lon)) {
        meta->gps_known = 1;
        meta->lat = lat;
        meta->lon = lon;
    }
}

/* How photo tools show the makes cameras write in capitals or with a company
 * suffix ("FUJIFILM", "NIKON CORPORATION", "OLYMPUS IMAGING CORP."): the brand
 * people search and read.  A make is matched case-insensitively on its first
 * word; makes not listed are kept as written. */
static const struct {
    const char *first_word; /* the make's first word, any case */
    const char *display;
} camera_brands[] = {
    {"apple", "Apple"},         {"canon", "Canon"},     {"casio", "Casio"},       {"dji", "DJI"},
    {"fujifilm", "Fujifilm"},   {"fuji", "Fujifilm"},   {"google", "Google"},     {"gopro", "GoPro"},
    {"hasselblad", "Hasselblad"}, {"htc", "HTC"},       {"huawei", "Huawei"},     {"kodak", "Kodak"},
    {"eastman", "Kodak"},       {"konica", "Konica Minolta"}, {"minolta", "Minolta"}, {"leica", "Leica"},
    {"lge", "LG"},              {"lg", "LG"},           {"motorola", "Motorola"}, {"nikon", "Nikon"},
    {"olympus", "Olympus"},     {"om", "OM System"},    {"oneplus", "OnePlus"},   {"panasonic", "Panasonic"},
    {"pentax", "Pentax"},       {"ricoh", "Ricoh"},     {"samsung", "Samsung"},   {"sigma", "Sigma"},
    {"sony", "Sony"},           {"xiaomi", "Xiaomi"},
};

/* The length of s's first word (up to a space, ',' or '.'). */
static size_t first_word_len(const char *s)
{
    size_t n = 0;
    while (s[n] && s[n] != ' ' && s[n] != ',' && s[n] != '.')
        n++;
    return n;
}

/* s starts with word (case-insensitive) followed by a space or its end. */
static int starts_with_word(const char *s, const char *word, size_t len)
{
    return len && strncasecmp(s, word, len) == 0 && (s[len] == ' ' || s[len] == 0);
}

void enc_meta_set_camera(enc_image_meta *meta, const char *make_s, const char *model_s)
{
    char make[40], model[86]; /* "make model" fits camera[128] */
    int has_make = copy_clean(make_s, make, sizeof make), has_model = copy_clean(model_s, model, sizeof model);
    if (!has_make && !has_model)
        return;
    const char *brand = has_make ? make : NULL;
    size_t make_word = has_make ? first_word_len(make) : 0;
    for (size_t i = 0; has_make && i < sizeof camera_brands / sizeof *camera_brands; i++)
        if (strlen(camera_brands[i].first_word) == make_word &&
            strncasecmp(make, camera_brands[i].first_word, make_word) == 0) {
            brand = camera_brands[i].display;
            break;
        }
    const char *m = has_model ? model : NULL;
    if (m && brand) {
        /* the model repeats the make ("NIKON D750", "Canon EOS 5D"): drop it once */
        if (starts_with_word(m, make, strlen(make)))
            m += strlen(make);
        else if (starts_with_word(m, make, make_word))
            m += make_word;
        else if (starts_with_word(m, brand, strlen(brand)))
            m += strlen(brand);
        while (*m == ' ')
            m++;
        if (!*m)
            m = NULL;
    }
    if (brand && m)
        snprintf(meta->camera, sizeof meta->camera, "%s %s", brand, m);
    else
        snprintf(meta->camera, sizeof meta->camera, "%s", brand ? brand : m);
    meta->camera_known = 1;
}

void enc_meta_set_taken_at(enc_image_meta *meta, const char *datetime, const char *offset)
{
    char s[64];
    if (!copy_clean(datetime, s, sizeof s) || !parse_datetime(s, meta->taken_at))
        return;
    meta->taken_at_known = 1;
    int off;
    if (copy_clean(offset, s, sizeof s) && parse_offset(s, &off)) {
        meta->offset_known = 1;
        meta->offset_minutes = off;
        size_t n = strlen(meta->taken_at);
        snprintf(meta->taken_at + n, sizeof meta->taken_at - n, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60,
                 abs(off) % 60);
    }
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
        char dto[64], off[64], make[64], model[128];
        if (entry_string(ed->ifd[EXIF_IFD_EXIF], EXIF_TAG_DATE_TIME_ORIGINAL, dto, sizeof dto))
            enc_meta_set_taken_at(meta, dto,
                                  entry_string(ed->ifd[EXIF_IFD_EXIF], EXIF_TAG_OFFSET_TIME_ORIGINAL, off, sizeof off)
                                      ? off : NULL);
        enc_meta_set_camera(meta, entry_string(ed->ifd[EXIF_IFD_0], EXIF_TAG_MAKE, make, sizeof make) ? make : NULL,
                            entry_string(ed->ifd[EXIF_IFD_0], EXIF_TAG_MODEL, model, sizeof model) ? model : NULL);
        double lat[3], lon[3];
        char lat_ref[8], lon_ref[8];
        if (gps_entry(ed, EXIF_TAG_GPS_LATITUDE, EXIF_TAG_GPS_LATITUDE_REF, lat, lat_ref, sizeof lat_ref) &&
            gps_entry(ed, EXIF_TAG_GPS_LONGITUDE, EXIF_TAG_GPS_LONGITUDE_REF, lon, lon_ref, sizeof lon_ref))
            enc_meta_set_gps(meta, lat, lat_ref, lon, lon_ref);
    }
    exif_data_unref(ed);
}
