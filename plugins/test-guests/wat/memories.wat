;; A filter whose init grows two extra linear memories by 48 MiB each: within
;; a per-memory cap of 64 MiB each would fit, but not within one cap for the
;; instance. A refused growth returns -1, on which it traps, as Rust does.
(module
  (memory (export "memory") 1)
  (memory $extra1 0)
  (memory $extra2 0)
  (global $heap (mut i32) (i32.const 1024))
  ;; A bump allocator: align the heap, hand out `size` bytes, grow memory 0 if needed.
  (func $alloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
               (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size 0) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow 0
                (i32.add (i32.const 1)
                  (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size 0) (i32.const 65536)))
                             (i32.const 65536))))
              (i32.const -1))
          (then unreachable))))
    (local.get $ptr))
  ;; ok(_) for init: the tag 0 at the return area.
  (func $ok (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
  ;; err("unused") for a batch function that is never meant to be called.
  (func $unused (result i32)
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.store (i32.const 20) (i32.const 32))
    (i32.store (i32.const 24) (i32.const 6))
    (i32.const 16))
  (data (i32.const 32) "unused")
  (func (export "init") (param i32 i32) (result i32)
    (if (i32.eq (memory.grow $extra1 (i32.const 768)) (i32.const -1)) (then unreachable))
    (if (i32.eq (memory.grow $extra2 (i32.const 768)) (i32.const -1)) (then unreachable))
    (call $ok))
  (func (export "filter") (param i32 i32) (result i32)
    (call $unused))
)
