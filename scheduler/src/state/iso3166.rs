//! ISO 3166-1 alpha-2 country codes and ISO 3166-2 subdivision code shape.
//!
//! The 249 officially assigned alpha-2 codes (ISO 3166 Maintenance Agency, as of 2026). Node
//! location facts must use one of them: an unknown code would make residency rules silently
//! miss a node, so it is rejected at registration (fail closed, invariant I5).

/// Officially assigned ISO 3166-1 alpha-2 codes, sorted.
pub const COUNTRIES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Whether `code` is an officially assigned ISO 3166-1 alpha-2 code (upper case).
pub fn is_country(code: &str) -> bool {
    COUNTRIES.binary_search(&code).is_ok()
}

/// Whether `code` has the shape of an ISO 3166-2 code of `country`: `FR-IDF`, `DE-BY`, `US-CA`
/// (the country, a dash, then 1 to 3 upper-case letters or digits).
pub fn is_subdivision_of(code: &str, country: &str) -> bool {
    let Some((prefix, local)) = code.split_once('-') else {
        return false;
    };
    prefix == country
        && (1..=3).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_unique_and_checked() {
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]));
        for ok in ["FR", "DE", "US", "CN", "MO", "TW", "GB"] {
            assert!(is_country(ok), "{ok}");
        }
        for bad in ["fr", "UK", "EU", "XX", "FRA", ""] {
            assert!(!is_country(bad), "{bad}");
        }
        assert!(is_subdivision_of("FR-IDF", "FR"));
        assert!(is_subdivision_of("DE-BY", "DE"));
        assert!(!is_subdivision_of("FR-IDF", "DE"));
        assert!(!is_subdivision_of("FR-idf", "FR"));
        assert!(!is_subdivision_of("FR", "FR"));
    }
}
