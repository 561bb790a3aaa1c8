// The shop's consumer of octopods-worker result events.
//   node results.js                  # handle events until Ctrl-C
//   IDLE_EXIT_SECONDS=5 node results.js
// A durable quorum queue bound to `octopods.results` (routing keys
// `<event>.<channel>`: `sent.#`, `dead_lettered.#`, or `#`), at most 50 events
// at a time (prefetch), each acked only after handle() dealt with it; an event
// whose handling fails goes back to the queue. To wait for one job's event,
// use `WAIT_SECONDS=30 node publish.js …` (copies on a private queue).
import amqp from "amqplib";

const url = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const prefix = process.env.OCTOPODS_PREFIX ?? "octopods";
const queue = process.env.RESULTS_QUEUE ?? "shop.delivery-events.node";
const idleExit = Number(process.env.IDLE_EXIT_SECONDS ?? 0);

function handle(event) {
  // Record the event where the shop keeps delivery prompts (here: stdout).
  console.log(JSON.stringify(event));
}

const connection = await amqp.connect(url);
const channel = await connection.createChannel();
await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
await channel.bindQueue(queue, `${prefix}.results`, "#");
await channel.prefetch(50);
let idle;
const armIdle = () => {
  if (!idleExit) return;
  clearTimeout(idle);
  idle = setTimeout(() => connection.close(), idleExit * 1000);
};
armIdle();
await channel.consume(queue, (msg) => {
  if (msg === null) return; // cancelled by the broker
  armIdle();
  try {
    handle(JSON.parse(msg.content.toString()));
    channel.ack(msg);
  } catch (e) {
    console.error(`could not handle an event (${e}); it goes back to the queue`);
    setTimeout(() => channel.nack(msg, false, true), 1000);
  }
});
