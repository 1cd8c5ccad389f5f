// The Edge Function handler end to end: every body shape it accepts, every
// bad request it refuses, against the real queue and the fake model. Runs
// once per database path.

import { createHandler, type HttpDeps } from "./http.ts";
import { createModel } from "./model.ts";
import { startFakeOpenAI } from "./testing/fake_openai.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  DB_PATHS,
  eventually,
  FAKE_HTTP_SECRET,
  FAKE_OPENROUTER_KEY,
  testConfig,
  TestDb,
  testLogger,
} from "./test_support.ts";

const SERVICE_KEY = "test-service-role-key-not-real";

for (const path of DB_PATHS) {
  Deno.test(`HTTP handler via ${path.name}`, async (t) => {
    const fake = await startFakeOpenAI();
    const conn = await path.open();
    const rows = new TestDb();
    const env = {
      OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
      OPENROUTER_BASE_URL: fake.url,
      RUNNER_HTTP_SECRET: FAKE_HTTP_SECRET,
    };
    // The handler authorizes against SUPABASE_SERVICE_ROLE_KEY; which client
    // it uses is the `db` given here.
    const config = testConfig({ ...env, SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY });
    const deps: HttpDeps = { config, db: conn.db, model: createModel(config), log: testLogger() };
    const handler = createHandler(deps);

    const post = (body: unknown, headers: Record<string, string> = {}) =>
      handler(
        new Request("http://runner.test/", {
          method: "POST",
          headers: {
            authorization: `Bearer ${SERVICE_KEY}`,
            "content-type": "application/json",
            ...headers,
          },
          body: typeof body === "string" ? body : JSON.stringify(body),
        }),
      );

    /** A project with one queued task, and the rejected request leaves it so. */
    async function untouched(send: (projectId: string) => Promise<Response>) {
      const projectId = await rows.project();
      const taskId = await rows.enqueue(projectId);
      const response = await send(projectId);
      const task = await rows.task(taskId);
      assertEquals([task.status, task.attempts], ["queued", 0], "the task is untouched");
      return { response, body: await response.json() };
    }

    try {
      await t.step(
        "{projectId} processes that project's queued tasks and answers a summary",
        async () => {
          const projectId = await rows.project();
          const ids = [await rows.enqueue(projectId), await rows.enqueue(projectId)];
          const other = await rows.enqueue(await rows.project());
          const response = await post({ projectId });
          assertEquals(response.status, 200, "status");
          const body = await response.json();
          assertEquals(
            [body.claimed, body.completed, body.retried, body.failed],
            [2, 2, 0, 0],
            "summary counts",
          );
          assertEquals(body.project_id, projectId, "summary names the project");
          for (const id of ids) {
            assertEquals((await rows.task(id)).status, "completed", "task completed");
            assertEquals((await rows.assistantMessages(id)).length, 1, "reply written");
          }
          assertEquals((await rows.task(other)).status, "queued", "another project is left alone");
        },
      );

      await t.step("projectFilesContext reaches the model's system message", async () => {
        const projectId = await rows.project();
        await rows.enqueue(projectId);
        const before = fake.requests.length;
        const response = await post({
          projectId,
          projectFilesContext: {
            bucket: "project-files",
            path: `${projectId}/v7`,
            versionId: "ver-7",
            versionNumber: 7,
          },
        });
        assertEquals(response.status, 200, "status");
        assertMatch(
          fake.requests[before].body.messages[0].content,
          new RegExp(`"project-files" at "${projectId}/v7" \\(version 7, id ver-7\\)`),
          "system message carries the files context",
        );
      });

      await t.step("a Database Webhook INSERT body processes the record's project", async () => {
        const projectId = await rows.project();
        const taskId = await rows.enqueue(projectId);
        const response = await post({
          type: "INSERT",
          table: "ai_tasks",
          schema: "public",
          record: { id: taskId, project_id: projectId, status: "queued" },
          old_record: null,
        });
        assertEquals(response.status, 200, "status");
        const body = await response.json();
        assertEquals([body.source, body.claimed, body.completed], ["webhook", 1, 1], "summary");
        assertEquals((await rows.task(taskId)).status, "completed", "task completed");
      });

      for (
        const [name, body] of [["{}", {}], ['{"source":"cron"}', { source: "cron" }], [
          "the queue's wake-up",
          { trigger: "insert", due: 1 },
        ], ["an empty body", ""]] as const
      ) {
        await t.step(`the cron body ${name} drains any project`, async () => {
          const taskId = await rows.enqueue(await rows.project());
          const response = await post(body);
          assertEquals(response.status, 200, "status");
          const summary = await response.json();
          assertEquals(summary.project_id, null, "no project filter");
          assert(summary.completed >= 1, `completed at least ours: ${summary.completed}`);
          assertEquals((await rows.task(taskId)).status, "completed", "our task completed");
        });
      }

      await t.step(
        "Prefer: respond-async answers 202 at once and processes in the background",
        async () => {
          fake.push({ kind: "reply", content: "later", delayMs: 500 });
          const projectId = await rows.project();
          const taskId = await rows.enqueue(projectId);
          const response = await post({ projectId }, { prefer: "respond-async" });
          assertEquals(response.status, 202, "status");
          assertEquals(response.headers.get("preference-applied"), "respond-async", "applied");
          assertEquals((await response.json()).accepted, true, "accepted");
          const early = (await rows.task(taskId)).status;
          assert(early === "queued" || early === "running", `not done when answered: ${early}`);
          await eventually(
            () =>
              Promise.resolve(
                (deps.log as ReturnType<typeof testLogger>).lines.some((l) =>
                  l.event === "http_done" && l.async && l.project_id === projectId
                ),
              ),
            "the background run ends and logs its summary",
          );
          assertEquals(
            (await rows.task(taskId)).status,
            "completed",
            "completed in the background",
          );
        },
      );

      await t.step("Prefer: respond-async for an unknown project is still 404", async () => {
        const response = await post({ projectId: crypto.randomUUID() }, {
          prefer: "respond-async",
        });
        assertEquals(response.status, 404, "status");
      });

      await t.step("RUNNER_HTTP_SECRET is accepted as Bearer and as x-runner-secret", async () => {
        const bearer = await post({ projectId: await rows.project() }, {
          authorization: `Bearer ${FAKE_HTTP_SECRET}`,
        });
        assertEquals(bearer.status, 200, "Bearer secret");
        const header = await post({ projectId: await rows.project() }, {
          authorization: "Bearer some-gateway-anon-jwt",
          "x-runner-secret": FAKE_HTTP_SECRET,
        });
        assertEquals(header.status, 200, "x-runner-secret beside a gateway key");
      });

      await t.step("a missing Authorization is 401 and processes nothing", async () => {
        const { response, body } = await untouched((projectId) =>
          handler(
            new Request("http://runner.test/", {
              method: "POST",
              body: JSON.stringify({ projectId }),
            }),
          )
        );
        assertEquals(response.status, 401, "status");
        assertEquals(response.headers.get("www-authenticate"), "Bearer", "challenge");
        assertMatch(body.error, /Authorization header is required/, "error");
      });

      await t.step("a wrong key is 401 and processes nothing", async () => {
        const { response, body } = await untouched((projectId) =>
          post({ projectId }, { authorization: "Bearer not-the-key" })
        );
        assertEquals(response.status, 401, "status");
        assertMatch(body.error, /key is wrong/, "error");
        assert(!JSON.stringify(body).includes(SERVICE_KEY), "the real key is not echoed");
      });

      await t.step("malformed JSON is 400 and says so", async () => {
        const { response, body } = await untouched((projectId) =>
          post(`{"projectId": "${projectId}"`)
        );
        assertEquals(response.status, 400, "status");
        assertMatch(body.error, /body must be JSON/, "error");
      });

      await t.step("a JSON body that is not an object is 400", async () => {
        const response = await post([1, 2]);
        assertEquals(response.status, 400, "status");
        assertMatch((await response.json()).error, /must be a JSON object, got an array/, "error");
      });

      await t.step("projectFilesContext without projectId is 400 naming projectId", async () => {
        const { response, body } = await untouched(() =>
          post({ projectFilesContext: { bucket: "b", path: "p" } })
        );
        assertEquals(response.status, 400, "status");
        assertEquals(body.field, "projectId", "field");
        assertMatch(body.error, /projectId is required/, "error");
      });

      await t.step("an invalid projectId is 400 naming it", async () => {
        for (const bad of ["not-a-uuid", 42, null]) {
          const response = await post({ projectId: bad });
          assertEquals(response.status, 400, `status for ${JSON.stringify(bad)}`);
          const body = await response.json();
          assertEquals(body.field, "projectId", "field");
          assertMatch(body.error, /projectId must be a UUID, got /, "error");
        }
      });

      await t.step("a bad projectFilesContext is 400 naming the field", async () => {
        const response = await post({
          projectId: crypto.randomUUID(),
          projectFilesContext: { bucket: "b", path: "p", versionNumber: -1 },
        });
        assertEquals(response.status, 400, "status");
        assertEquals((await response.json()).field, "projectFilesContext.versionNumber", "field");
      });

      await t.step("an unknown field is 400 naming it", async () => {
        const response = await post({ projectID: crypto.randomUUID() });
        assertEquals(response.status, 400, "status");
        assertMatch((await response.json()).error, /unknown field projectID/, "error");
      });

      await t.step("a webhook for another event or without project_id is 400", async () => {
        const update = await post({ type: "UPDATE", table: "ai_tasks", record: {} });
        assertEquals(update.status, 400, "UPDATE");
        assertMatch((await update.json()).error, /must be an INSERT on ai_tasks/, "error");
        const noProject = await post({ type: "INSERT", table: "ai_tasks", record: { id: "x" } });
        assertEquals(noProject.status, 400, "no project_id");
        assertEquals((await noProject.json()).field, "record.project_id", "field");
      });

      await t.step("a method other than POST is 405 with Allow: POST", async () => {
        for (const method of ["GET", "PUT", "DELETE"]) {
          const response = await handler(
            new Request("http://runner.test/", {
              method,
              headers: { authorization: `Bearer ${SERVICE_KEY}` },
            }),
          );
          assertEquals(response.status, 405, `status for ${method}`);
          assertEquals(response.headers.get("allow"), "POST", "Allow header");
          assertMatch((await response.json()).error, /method must be POST/, "error");
        }
      });

      await t.step("a project that does not exist is 404", async () => {
        const missing = crypto.randomUUID();
        const response = await post({ projectId: missing });
        assertEquals(response.status, 404, "status");
        assertEquals((await response.json()).error, `project ${missing} not found`, "error");
      });

      await t.step("an existing project with nothing due is 200 with zero counts", async () => {
        const response = await post({ projectId: await rows.project() });
        assertEquals(response.status, 200, "status");
        assertEquals((await response.json()).claimed, 0, "nothing claimed");
      });

      await t.step(
        "a time budget that runs out releases the task without spending its attempt",
        async () => {
          fake.push({ kind: "hang", ms: 30_000 });
          const tight = testConfig({
            ...env,
            SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY,
            RUNNER_TIME_BUDGET_MS: "1500",
            RUNNER_MODEL_TIMEOUT_MS: "60000",
          });
          const tightHandler = createHandler({ ...deps, config: tight });
          const projectId = await rows.project();
          const taskId = await rows.enqueue(projectId);
          const started = Date.now();
          const response = await tightHandler(
            new Request("http://runner.test/", {
              method: "POST",
              headers: { authorization: `Bearer ${SERVICE_KEY}` },
              body: JSON.stringify({ projectId }),
            }),
          );
          assertEquals(response.status, 200, "status");
          const body = await response.json();
          assert(Date.now() - started < 5000, "answered within the budget, not after the hang");
          assertEquals(
            [body.claimed, body.released, body.budget_exhausted],
            [1, 1, true],
            "summary",
          );
          const task = await rows.task(taskId);
          assertEquals(task.status, "queued", "back in the queue");
          assertEquals(task.max_attempts - task.attempts, 3, "attempt not spent");
          assertEquals((await rows.logEvents(taskId)).at(-1), "released", "logged as released");
        },
      );
    } finally {
      await rows.close();
      await conn.close();
      await fake.close();
    }
  });
}

Deno.test("HTTP handler with no key or secret configured refuses every request", async () => {
  const config = testConfig({});
  const handler = createHandler({
    config,
    db: null as never,
    model: createModel(config),
    log: testLogger(),
  });
  const response = await handler(
    new Request("http://runner.test/", {
      method: "POST",
      headers: { authorization: "Bearer anything" },
      body: "{}",
    }),
  );
  assertEquals(response.status, 500, "status");
  assertMatch(
    (await response.json()).error,
    /neither SUPABASE_SERVICE_ROLE_KEY nor RUNNER_HTTP_SECRET/,
    "error names both settings",
  );
});
