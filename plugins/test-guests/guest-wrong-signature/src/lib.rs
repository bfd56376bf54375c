//! Hostile test guest: exports functions named like the `filter` world's,
//! with other types, so the host must reject it as the wrong world.

wit_bindgen::generate!({
    inline: "
        package wasmhook:impostor;

        world filter {
            export init: func(config: string) -> bool;
            export filter: func(batch: list<u8>) -> list<bool>;
        }
    ",
    world: "filter",
});

struct Impostor;

impl Guest for Impostor {
    fn init(_config: String) -> bool {
        true
    }

    fn filter(batch: Vec<u8>) -> Vec<bool> {
        vec![true; batch.len()]
    }
}

export!(Impostor);
