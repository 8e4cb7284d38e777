/* capture.h - when, where and with what a photo was taken (db_capture, from
 * its EXIF) in the engine: ISO 8601 text in and out, and the filters on it
 * (search.h eng_filters: taken_after / taken_before, camera, near).
 *
 * Times.  A capture time is the clock time of the place it was taken (EXIF
 * DateTimeOriginal), with that clock's UTC offset when the photo says it
 * (OffsetTimeOriginal).  A filter bound without an offset ("2019-07-14",
 * "2019-07-14T18:00") is a clock time too, compared with the photos' clock
 * times: "July 2019" means July where each photo was taken.  A bound with
 * an offset ("...+02:00", "...Z") is an instant: compared in UTC with each
 * photo's instant, a photo without a known offset counted as if its clock
 * were UTC (its true instant is unknown; real offsets are -12..+14 h).  Photos
 * without a capture time never pass a date filter. */
#ifndef UMG_ENGINE_CAPTURE_H
#define UMG_ENGINE_CAPTURE_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "enc_image.h"

/* A time as ISO 8601 writes it: clock seconds from 1970-01-01T00:00:00 of
 * that clock, and the clock's offset when given. */
typedef struct eng_time {
    int64_t clock;
    int has_offset;
    int offset_minutes;      /* east of UTC */
} eng_time;

/* Parse "YYYY-MM-DD", optionally followed by "T" (or a space) "HH:MM",
 * ":SS", fractional seconds (ignored), and "Z" or "+HH:MM" / "-HH:MM"; years
 * 0001..9999, real calendar days.  UMG_EINVAL (with a message) otherwise. */
int eng_time_parse(const char *s, size_t len, eng_time *out);

/* The ISO 8601 text of a photo's capture time into buf (at least 32 bytes):
 * "2019-07-14T12:00:00", with "+02:00" when its offset is known.  0 when the
 * time is unknown (buf ""), else the length. */
size_t eng_taken_format(const db_capture *c, char *buf, size_t cap);

/* db_capture of what a decoder read from EXIF (enc_image_meta): fields the
 * database would refuse (a time it cannot hold, a camera name that is not
 * UTF-8, a position out of range) are left unknown, never an error. */
void eng_capture_from_meta(const enc_image_meta *m, db_capture *out);

/* Whether the photo's capture time is at or after `after` (after = 1) or
 * before `bound` (after = 0), by the rules above. */
int eng_taken_passes(const db_capture *c, const eng_time *bound, int after);

/* Great-circle distance in km (haversine, mean Earth radius 6371.0088 km). */
double eng_km_between(double lat1, double lon1, double lat2, double lon2);

/* Whether needle (len bytes) is inside the camera name, ASCII letters
 * compared without case. */
int eng_camera_matches(const char *camera, const char *needle, size_t len);

#endif
