;; A policy whose every decision is redact(the same 48 MiB buffer): lifted
;; eagerly, a batch of n messages would make the host copy n × 48 MiB.
(module
  (memory (export "memory") 1)
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
    (call $ok))
  ;; authorise(ctx: three strings, batch: list) -> result<list<decision>, string>
  (func (export "authorise") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (local $big i32) (local $list i32) (local $entry i32) (local $i i32) (local $n i32)
    (local.set $n (local.get 7))
    ;; 48 MiB at the end of memory.
    (local.set $big (memory.grow (i32.const 768)))
    (if (i32.eq (local.get $big) (i32.const -1)) (then unreachable))
    (local.set $big (i32.mul (local.get $big) (i32.const 65536)))
    ;; n decisions of 12 bytes: tag 2 (redact), pointer, length.
    (local.set $list (call $alloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.mul (local.get $n) (i32.const 12))))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $entry (i32.add (local.get $list) (i32.mul (local.get $i) (i32.const 12))))
        (i32.store8 (local.get $entry) (i32.const 2))
        (i32.store offset=4 (local.get $entry) (local.get $big))
        (i32.store offset=8 (local.get $entry) (i32.const 50331648))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $list))
    (i32.store (i32.const 24) (local.get $n))
    (i32.const 16))
)
